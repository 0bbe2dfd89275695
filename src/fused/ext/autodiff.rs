//! The fused operations on `Autodiff`: the forward pass on the inner backend, which writes the
//! gradient, and a hand-written backward that hands it over (or recomputes it).

use super::*;
use burn_autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};

/// One term of the fused loss (`α·S + β·H`, `S` or `H`) as its own graph node.
#[derive(Debug)]
struct KdFusedBackward;

/// What a term's backward pass needs: for the total, the gradient computed in the forward
/// pass; for every term, the inputs to recompute its gradient, and the term's coefficients
/// `(c_S, c_H)` on `S` and `H`.
type State<B> = (
    Option<FloatTensor<B>>,
    FloatTensor<B>,
    FloatTensor<B>,
    IntTensor<B>,
    FloatTensor<B>,
    KernelParams,
);

/// The (one-element) upstream gradient of a fused term, read to the host: the backward
/// pass chooses between the kept gradient, a scaled copy and a recomputation from it.
pub(super) fn upstream_on_host<B: Backend>(upstream: FloatTensor<B>) -> f32 {
    burn::tensor::try_read_sync(B::float_into_data(upstream))
        .expect("fused kernel: synchronous read of the upstream gradient")
        .expect("fused kernel: reading the upstream gradient")
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 upstream gradient")[0]
}

/// The gradient kept from the forward pass times the upstream scalar `c` (as is for `c = 1`,
/// the common `loss.backward()`: no copy).
pub(super) fn scaled<B: Backend>(stash: FloatTensor<B>, c: f32) -> FloatTensor<B> {
    if c == 1.0 {
        stash
    } else {
        B::float_mul_scalar(stash, c.into())
    }
}

impl<B: KdFusedBackend> Backward<B, 1> for KdFusedBackward {
    type State = State<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let upstream = grads.consume::<B>(&ops.node);
        let Some(node) = node else { return };
        let (stash, student, teacher, labels, weights, params) = ops.state;
        let grad = match stash {
            // The total: its gradient was computed in the forward pass; scaled on the device.
            Some(stash) => B::kd_scale_by(stash, upstream),
            // A term used on its own: recompute once, in one fused pass (the upstream scalar is
            // a kernel parameter, read on the host).
            None => {
                let c = upstream_on_host::<B>(upstream);
                let p = KernelParams {
                    grad_soft: c * params.grad_soft,
                    grad_hard: c * params.grad_hard,
                    ..params
                };
                B::kd_fused_values_grad(student, teacher, labels, weights, p).1
            }
        };
        grads.register::<B>(node.id, grad);
    }
}

/// A node whose one parent's gradient was computed in the forward pass and kept as the node's
/// state: the backward hands it over, scaled by the upstream scalar (as is for `c = 1`). The
/// top-k teacher loss and the LM head's gradient hand-over ([`KdHandOverBackend`]).
#[derive(Debug)]
struct KdStashedBackward;

impl<B: KdFusedBackend> Backward<B, 1> for KdStashedBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let upstream = grads.consume::<B>(&ops.node);
        let Some(node) = node else { return };
        grads.register::<B>(node.id, B::kd_scale_by(ops.state, upstream));
    }
}

impl<B: crate::fused::route::KernelCaps, C: CheckpointStrategy> crate::fused::route::KernelCaps
    for Autodiff<B, C>
{
    fn computes(
        dtype: burn::tensor::DType,
        kind: crate::fused::SoftKind,
        device: &B::Device,
    ) -> bool {
        B::computes(dtype, kind, device)
    }

    fn computes_sparse(dtype: burn::tensor::DType, device: &B::Device) -> bool {
        B::computes_sparse(dtype, device)
    }
}

impl<B: KdFusedBackend, C: CheckpointStrategy> KdFusedBackend for Autodiff<B, C> {
    fn kd_fused_values(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        labels: IntTensor<Self>,
        weights: FloatTensor<Self>,
        params: KernelParams,
    ) -> FloatTensor<Self> {
        let (total, soft, hard) = Self::kd_fused_terms(student, teacher, labels, weights, params);
        <Self as burn::backend::ops::FloatTensorOps<Self>>::float_cat(vec![total, soft, hard], 0)
    }

    fn kd_fused_values_grad(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        labels: IntTensor<Self>,
        weights: FloatTensor<Self>,
        params: KernelParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (values, grad) = B::kd_fused_values_grad(
            student.into_primitive(),
            teacher.into_primitive(),
            labels,
            weights.into_primitive(),
            params,
        );
        (
            <FloatTensor<Self>>::new(values),
            <FloatTensor<Self>>::new(grad),
        )
    }

    fn kd_scale_by(grad: FloatTensor<Self>, upstream: FloatTensor<Self>) -> FloatTensor<Self> {
        // Used inside backward passes on the inner backend; here untracked.
        <FloatTensor<Self>>::new(B::kd_scale_by(
            grad.into_primitive(),
            upstream.into_primitive(),
        ))
    }

    fn kd_sparse_values(
        student: FloatTensor<Self>,
        indices: IntTensor<Self>,
        values: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        params: KernelParams,
    ) -> FloatTensor<Self> {
        <FloatTensor<Self>>::new(B::kd_sparse_values(
            student.into_primitive(),
            indices,
            values.into_primitive(),
            weights.into_primitive(),
            params,
        ))
    }

    fn kd_sparse_values_grad(
        student: FloatTensor<Self>,
        indices: IntTensor<Self>,
        values: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        params: KernelParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, grad) = B::kd_sparse_values_grad(
            student.into_primitive(),
            indices,
            values.into_primitive(),
            weights.into_primitive(),
            params,
        );
        (
            <FloatTensor<Self>>::new(out),
            <FloatTensor<Self>>::new(grad),
        )
    }

    fn kd_sparse_loss(
        student: FloatTensor<Self>,
        indices: IntTensor<Self>,
        values: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        params: KernelParams,
    ) -> FloatTensor<Self> {
        let s = student.clone().into_primitive();
        let values = values.into_primitive();
        let weights = weights.into_primitive();
        let first = |out: FloatTensor<B>| B::float_slice(out, &[burn::backend::Slice::from(0..1)]);
        match KdStashedBackward
            .prepare::<C>([student.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let p = KernelParams {
                    grad_soft: 1.0,
                    grad_hard: 0.0,
                    ..params
                };
                let (out, grad) = B::kd_sparse_values_grad(s, indices, values, weights, p);
                prep.finish(grad, first(out))
            }
            OpsKind::UnTracked(prep) => prep.finish(first(B::kd_sparse_values(
                s, indices, values, weights, params,
            ))),
        }
    }

    fn kd_fused_terms(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        labels: IntTensor<Self>,
        weights: FloatTensor<Self>,
        params: KernelParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let teacher = teacher.into_primitive();
        let weights = weights.into_primitive();
        let prepare = || {
            KdFusedBackward
                .prepare::<C>([student.node()])
                .compute_bound()
                .stateful()
        };
        let term = |values: &FloatTensor<B>, k: usize| {
            B::float_slice(values.clone(), &[burn::backend::Slice::from(k..k + 1)])
        };
        let s = student.clone().into_primitive();
        let state = |stash, grad_soft, grad_hard| -> State<B> {
            let p = KernelParams {
                grad_soft,
                grad_hard,
                ..params
            };
            (
                stash,
                s.clone(),
                teacher.clone(),
                labels.clone(),
                weights.clone(),
                p,
            )
        };
        // The total's gradient is computed in the same pass as the values when the student
        // is tracked; the soft and hard terms keep only the inputs (no extra memory) and
        // recompute their gradient if they are differentiated.
        let (total, values) = match prepare() {
            OpsKind::Tracked(prep) => {
                let p = KernelParams {
                    grad_soft: params.alpha,
                    grad_hard: params.beta,
                    ..params
                };
                let (values, stash) = B::kd_fused_values_grad(
                    s.clone(),
                    teacher.clone(),
                    labels.clone(),
                    weights.clone(),
                    p,
                );
                let total = prep.finish(
                    state(Some(stash), params.alpha, params.beta),
                    term(&values, 0),
                );
                (total, values)
            }
            OpsKind::UnTracked(prep) => {
                let values = B::kd_fused_values(
                    s.clone(),
                    teacher.clone(),
                    labels.clone(),
                    weights.clone(),
                    params,
                );
                (prep.finish(term(&values, 0)), values)
            }
        };
        let finish = |k: usize, grad_soft: f32, grad_hard: f32| match prepare() {
            OpsKind::Tracked(prep) => {
                prep.finish(state(None, grad_soft, grad_hard), term(&values, k))
            }
            OpsKind::UnTracked(prep) => prep.finish(term(&values, k)),
        };
        (total, finish(1, 1.0, 0.0), finish(2, 0.0, 1.0))
    }
}

/// The squared-error backward: the gradient computed in the forward pass, scaled by the
/// upstream scalar.
#[derive(Debug)]
struct KdSqBackward;

impl<B: KdSqBackend> Backward<B, 1> for KdSqBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let upstream = grads.consume::<B>(&ops.node);
        let Some(node) = node else { return };
        let c = upstream_on_host::<B>(upstream);
        let stash = ops.state;
        grads.register::<B>(node.id, scaled::<B>(stash, c));
    }
}

impl<B: KdSqBackend, C: CheckpointStrategy> KdSqBackend for Autodiff<B, C> {
    fn kd_sq_value(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        zero_inf: bool,
    ) -> FloatTensor<Self> {
        let teacher = teacher.into_primitive();
        let weights = weights.into_primitive();
        match KdSqBackward
            .prepare::<C>([student.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (value, stash) =
                    B::kd_sq_value_grad(student.into_primitive(), teacher, weights, zero_inf);
                prep.finish(stash, value)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::kd_sq_value(
                student.into_primitive(),
                teacher,
                weights,
                zero_inf,
            )),
        }
    }

    fn kd_sq_value_grad(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        zero_inf: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (value, grad) = B::kd_sq_value_grad(
            student.into_primitive(),
            teacher.into_primitive(),
            weights.into_primitive(),
            zero_inf,
        );
        (
            <FloatTensor<Self>>::new(value),
            <FloatTensor<Self>>::new(grad),
        )
    }
}

impl<B: KdFusedBackend, C: CheckpointStrategy> KdHandOverBackend for Autodiff<B, C> {
    fn kd_hand_over(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let grad = grad.into_primitive();
        let zero = B::float_zeros(
            burn::backend::Shape::new([1]),
            &burn::backend::TensorMetadata::device(&grad),
            burn::tensor::FloatDType::F32,
        );
        match KdStashedBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(grad, zero),
            OpsKind::UnTracked(prep) => prep.finish(zero),
        }
    }
}
