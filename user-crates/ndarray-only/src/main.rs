//! Burn without default features: ndarray (no kernel: the composed path), with autodiff.
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
}
