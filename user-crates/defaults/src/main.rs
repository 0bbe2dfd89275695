//! Burn's default features + flex + wgpu + autodiff (wgpu under `fusion`): Flex runs the CPU kernel, wgpu the
//! CubeCL kernel.
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
    // The CubeCL kernel serves wgpu under Burn's default `fusion`.
    let gpu = true;
    let wgpu = Device::wgpu(Default::default());
    check::check("wgpu(fusion)", &wgpu, gpu);
    check::check("wgpu(fusion)+autodiff", &wgpu.clone().autodiff(), gpu);
    check_grad::check_grad("wgpu(fusion)+autodiff", &wgpu.autodiff());
}
