//! Burn's default features + flex + wgpu + autodiff (wgpu under `fusion`): Flex runs the CPU kernel, wgpu the
//! CubeCL kernel with `KD_GPU_KERNEL=1`.
#[path = "../../check.rs"]
mod check;
#[path = "../../check_grad.rs"]
mod check_grad;

use burn::tensor::Device;

fn main() {
    let flex = Device::flex();
    check::check("flex", &flex, true);
    check::check("flex+autodiff", &flex.clone().autodiff(), true);
    check_grad::check_grad("flex+autodiff", &flex.autodiff());
    // The CubeCL kernel runs with KD_GPU_KERNEL=1 (run.sh runs both ways).
    let gpu = std::env::var("KD_GPU_KERNEL").is_ok_and(|v| v == "1");
    let wgpu = Device::wgpu(Default::default());
    check::check("wgpu(fusion)", &wgpu, gpu);
    check::check("wgpu(fusion)+autodiff", &wgpu.clone().autodiff(), gpu);
    check_grad::check_grad("wgpu(fusion)+autodiff", &wgpu.autodiff());
}
