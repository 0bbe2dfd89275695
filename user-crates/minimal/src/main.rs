//! Burn without default features, no autodiff: Flex (the CPU kernel) and wgpu without Burn's
//! `fusion` (the CubeCL kernel on the plain CubeCL backend) serve the forward pass.
#[path = "../../check.rs"]
mod check;

use burn::tensor::Device;

fn main() {
    check::check("flex (no autodiff in Burn)", &Device::flex(), true);
    check::check(
        "wgpu without fusion (no autodiff in Burn)",
        &Device::wgpu(Default::default()),
        true,
    );
}
