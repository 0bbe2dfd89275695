//! Burn without default features: ndarray (no kernel: composed path) and wgpu without `fusion`
//! (the plain CubeCL backend: the GPU kernel), with autodiff.
#[path = "../../check.rs"]
mod check;

use burn::tensor::Device;

fn main() {
    let nd = Device::ndarray();
    check::check("ndarray", &nd, false, false);
    check::check("ndarray+autodiff", &nd.autodiff(), false, true);
    let wgpu = Device::wgpu(Default::default());
    check::check("wgpu(no fusion)", &wgpu, true, false);
    check::check("wgpu(no fusion)+autodiff", &wgpu.autodiff(), true, true);
}
