//! Burn's default features + flex + wgpu + autodiff (wgpu under `fusion`): every device runs the
//! fused kernel.
#[path = "../../check.rs"]
mod check;

use burn::tensor::Device;

fn main() {
    let flex = Device::flex();
    check::check("flex", &flex, true, false);
    check::check("flex+autodiff", &flex.autodiff(), true, true);
    let wgpu = Device::wgpu(Default::default());
    check::check("wgpu(fusion)", &wgpu, true, false);
    check::check("wgpu(fusion)+autodiff", &wgpu.autodiff(), true, true);
}
