//! Burn's default features + flex + wgpu + autodiff (wgpu under `fusion`): every device runs the
//! fused kernel.
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
    let wgpu = Device::wgpu(Default::default());
    check::check("wgpu(fusion)", &wgpu, true);
    check::check("wgpu(fusion)+autodiff", &wgpu.clone().autodiff(), true);
    check_grad::check_grad("wgpu(fusion)+autodiff", &wgpu.autodiff());
}
