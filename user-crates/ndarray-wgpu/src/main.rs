//! Burn without default features: ndarray (no kernel: composed path) and wgpu without `fusion`
//! (the plain CubeCL backend: the GPU kernel with `KD_GPU_KERNEL=1`), with autodiff.
#[path = "../../check.rs"]
mod check;
#[path = "../../check_grad.rs"]
mod check_grad;

use burn::tensor::Device;

fn main() {
    let nd = Device::ndarray();
    check::check("ndarray", &nd, false);
    check::check("ndarray+autodiff", &nd.clone().autodiff(), false);
    check_grad::check_grad("ndarray+autodiff", &nd.autodiff());
    // The CubeCL kernel runs with KD_GPU_KERNEL=1 (run.sh runs both ways).
    let gpu = std::env::var("KD_GPU_KERNEL").is_ok_and(|v| v == "1");
    let wgpu = Device::wgpu(Default::default());
    check::check("wgpu(no fusion)", &wgpu, gpu);
    check::check("wgpu(no fusion)+autodiff", &wgpu.clone().autodiff(), gpu);
    check_grad::check_grad("wgpu(no fusion)+autodiff", &wgpu.autodiff());
}
