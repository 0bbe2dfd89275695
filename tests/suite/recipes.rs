//! Self-distillation (deep supervision), the recipe of `docs/recipes.md#self-distillation`:
//! a network with an early exit, where the shallow exit learns from the deepest exit through
//! `soft_kl`, plus cross-entropy on both exits. Checks that (1) the KD term sends no gradient
//! into the deep exit's head (the teacher side is detached inside the loss), (2) it does reach
//! the shallow head and the shared trunk, and (3) a few optimizer steps lower the loss.

use crate::common::*;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use kd_losses::*;

#[derive(Module, Debug)]
struct TwoExitNet {
    trunk: Linear,
    deep: Linear,
    deep_head: Linear,
    shallow_head: Linear,
}

impl TwoExitNet {
    fn new(device: &Device) -> Self {
        TwoExitNet {
            trunk: LinearConfig::new(6, 16).init(device),
            deep: LinearConfig::new(16, 16).init(device),
            deep_head: LinearConfig::new(16, 4).init(device),
            shallow_head: LinearConfig::new(16, 4).init(device),
        }
    }

    /// `(shallow exit logits, deep exit logits)`.
    fn forward(&self, x: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let h = relu(self.trunk.forward(x));
        let shallow = self.shallow_head.forward(h.clone());
        let deep = self.deep_head.forward(relu(self.deep.forward(h)));
        (shallow, deep)
    }
}

fn batch(device: &Device) -> (Tensor<2>, Tensor<1, burn::tensor::Int>) {
    let x: Vec<f32> = (0..48)
        .map(|i| ((i * 37 % 17) as f32 / 8.0) - 1.0)
        .collect();
    let y: Vec<i64> = (0..8).map(|i| (i * 3 % 4) as i64).collect();
    (floats(x, [8, 6], device), ints(y, [8], device))
}

/// The recipe: CE on both exits + α · T²·KL(deep ‖ shallow).
fn self_distillation_loss(
    shallow: Tensor<2>,
    deep: Tensor<2>,
    y: Tensor<1, burn::tensor::Int>,
) -> LossTerms {
    let ce = |logits: Tensor<2>| {
        cross_entropy(logits, y.clone(), &CrossEntropyOptions::default()).reduce(Reduction::RowMean)
    };
    let kd = soft_kl(
        shallow.clone(),
        deep.clone(),
        Temperature::new(3.0).unwrap(),
        T2Scaling::On,
    )
    .reduce(Reduction::RowMean);
    LossTerms::new()
        .with("ce_deep", 1.0, ce(deep))
        .and_then(|t| t.with("ce_shallow", 1.0, ce(shallow)))
        .and_then(|t| t.with("kd_shallow_from_deep", 0.5, kd))
        .unwrap()
}

#[test]
fn kd_term_trains_the_shallow_exit_only() {
    for (name, device) in devices() {
        device.seed(7);
        let net = TwoExitNet::new(&device);
        let (x, _) = batch(&device);
        let (shallow, deep) = net.forward(x);
        let kd = soft_kl(shallow, deep, Temperature::new(3.0).unwrap(), T2Scaling::On)
            .reduce(Reduction::RowMean);
        let grads = kd.backward();
        assert!(
            net.deep_head.weight.val().grad(&grads).is_none(),
            "{name}: deep head got a KD gradient"
        );
        assert!(
            net.deep.weight.val().grad(&grads).is_none(),
            "{name}: deep layer got a KD gradient"
        );
        let g = net
            .shallow_head
            .weight
            .val()
            .grad(&grads)
            .expect("shallow head gradient");
        assert!(
            to_vec(g).iter().any(|v| *v != 0.0),
            "{name}: zero shallow-head gradient"
        );
        assert!(
            net.trunk.weight.val().grad(&grads).is_some(),
            "{name}: trunk got no gradient"
        );
        report("recipe_self_distillation", name, 1);
    }
}

#[test]
fn self_distillation_lowers_the_loss() {
    let device = Device::flex().autodiff();
    device.seed(11);
    let mut net = TwoExitNet::new(&device);
    let mut optim = AdamConfig::new().init();
    let (x, y) = batch(&device);
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..60 {
        let (shallow, deep) = net.forward(x.clone());
        let terms = self_distillation_loss(shallow, deep, y.clone());
        assert_eq!(terms.terms().len(), 3);
        let total = terms.total();
        last = scalar(total.clone());
        first.get_or_insert(last);
        let grads = GradientsParams::from_grads(total.backward(), &net);
        net = optim.step(1e-2, net, grads);
    }
    let first = first.unwrap();
    assert!(last < 0.6 * first, "loss {first} -> {last}");
}
