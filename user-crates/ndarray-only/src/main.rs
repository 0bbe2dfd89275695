//! Burn without default features: ndarray (no kernel: the composed path), with autodiff.
#[path = "../../check.rs"]
mod check;
#[path = "../../check_grad.rs"]
mod check_grad;

use burn::tensor::Device;

fn main() {
    // Deprecated in Burn 0.22 in favour of Flex, and still what many applications run on.
    #[allow(deprecated)]
    let nd = Device::ndarray();
    check::check("ndarray", &nd, false);
    check::check("ndarray+autodiff", &nd.clone().autodiff(), false);
    check_grad::check_grad("ndarray+autodiff", &nd.autodiff());
}
