//! Burn without default features, Flex only, no autodiff: the CPU kernel serves the forward pass.
#[path = "../../check.rs"]
mod check;

use burn::tensor::Device;

fn main() {
    check::check("flex (no autodiff in Burn)", &Device::flex(), true, false);
}
