//! The Burn backend extension behind the fused losses: one operation, implemented on Flex (the
//! CPU kernel in [`super::kernel`]) and on Autodiff (a hand-written backward), routed by Burn's
//! `#[backend_extension]` dispatch.

use burn::backend::Backend;
use burn::backend::backend_extension;
use burn::backend::tensor::{FloatTensor, IntTensor};

use super::kernel::KernelParams;

/// Fused logit-distillation operation over `[R, V]` student and teacher logits.
///
/// Inputs: `student`, `teacher` `[R, V]` (f32), `labels` `[R]` (read only when
/// `params.has_hard`), `weights` `[R]` (per-row reduction weights, `0` = dropped row).
/// Output `[3]`: `[α·S + β·H, S, H]` with `S = Σ_r w_r · soft_r`, `H = Σ_r w_r · hard_r`.
#[backend_extension(
    Flex: cfg(feature = "cpu-kernel"),
    Cube: cfg(any()),
    Autodiff: cfg(feature = "chunked")
)]
pub(crate) trait KdFusedBackend: Backend {
    /// Values only.
    fn kd_fused_values(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        labels: IntTensor<Self>,
        weights: FloatTensor<Self>,
        params: KernelParams,
    ) -> FloatTensor<Self>;

    /// Values and the gradient of `grad_soft · S + grad_hard · H` w.r.t. the student, `[R, V]`.
    fn kd_fused_values_grad(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        labels: IntTensor<Self>,
        weights: FloatTensor<Self>,
        params: KernelParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// Fused squared-error operation over `[R, K]` student and teacher maps (hidden states,
/// attention maps): output `[1]` = `Σ_r w_r Σ_k (s − t)²` (`±inf` entries count as 0 with
/// `zero_inf`). CPU only: the CubeCL backends run the composed path.
#[backend_extension(Flex: cfg(feature = "cpu-kernel"), Autodiff: cfg(feature = "chunked"))]
pub(crate) trait KdSqBackend: Backend {
    /// The value only.
    fn kd_sq_value(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        zero_inf: bool,
    ) -> FloatTensor<Self>;

    /// The value and its gradient w.r.t. the student, `[R, K]`.
    fn kd_sq_value_grad(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        zero_inf: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

#[cfg(feature = "cpu-kernel")]
mod flex {
    use super::*;
    use crate::fused::kernel::run_rows;
    use burn::backend::{DType, Flex, TensorMetadata};
    use burn::tensor::TensorData;

    type FlexFloat = FloatTensor<Flex>;

    fn contiguous_f32(t: &FlexFloat) -> std::borrow::Cow<'_, [f32]> {
        match t.as_slice::<f32>() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(
                t.to_contiguous()
                    .as_slice::<f32>()
                    .expect("fused kernel: f32 tensor")
                    .to_vec(),
            ),
        }
    }

    fn labels_i64(labels: &IntTensor<Flex>, rows: usize, needed: bool) -> Vec<i64> {
        if !needed {
            return Vec::new();
        }
        let c = labels.to_contiguous();
        let v: Vec<i64> = match c.dtype() {
            DType::I64 => c.as_slice::<i64>().expect("i64 labels").to_vec(),
            DType::I32 => c
                .as_slice::<i32>()
                .expect("i32 labels")
                .iter()
                .map(|&x| i64::from(x))
                .collect(),
            other => c
                .into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .unwrap_or_else(|e| panic!("labels: unsupported dtype {other:?}: {e:?}")),
        };
        assert_eq!(v.len(), rows, "labels: expected {rows} rows");
        v
    }

    /// A `[r, k]` gradient tensor over a (recycled) kernel buffer.
    fn grad_tensor(g: Vec<f32>, r: usize, k: usize) -> FlexFloat {
        FlexFloat::from_data(TensorData::from_bytes(
            crate::fused::pool::into_bytes(g),
            [r, k],
            DType::F32,
        ))
    }

    fn run(
        student: FlexFloat,
        teacher: FlexFloat,
        labels: IntTensor<Flex>,
        weights: FlexFloat,
        params: KernelParams,
        want_grad: bool,
    ) -> (FlexFloat, Option<FlexFloat>) {
        let shape = student.shape();
        let dims = shape.dims::<2>();
        let (r, v) = (dims[0], dims[1]);
        let s = contiguous_f32(&student);
        let t = contiguous_f32(&teacher);
        let w = contiguous_f32(&weights);
        let y = labels_i64(&labels, r, params.has_hard);
        let mut grad = want_grad.then(|| crate::fused::pool::take(r * v));
        let out = run_rows(&s, &t, &y, &w, v, &params, grad.as_deref_mut());
        let total = f64::from(params.alpha) * out.soft + f64::from(params.beta) * out.hard;
        let values = FlexFloat::from_data(TensorData::new(
            vec![total as f32, out.soft as f32, out.hard as f32],
            [3],
        ));
        (values, grad.map(|g| grad_tensor(g, r, v)))
    }

    fn run_sq(
        student: FlexFloat,
        teacher: FlexFloat,
        weights: FlexFloat,
        zero_inf: bool,
        want_grad: bool,
    ) -> (FlexFloat, Option<FlexFloat>) {
        let dims = student.shape().dims::<2>();
        let (r, k) = (dims[0], dims[1]);
        let s = contiguous_f32(&student);
        let t = contiguous_f32(&teacher);
        let w = contiguous_f32(&weights);
        let mut grad = want_grad.then(|| crate::fused::pool::take(r * k));
        let total = crate::fused::sq::run_sq_rows(&s, &t, &w, k, zero_inf, grad.as_deref_mut());
        let value = FlexFloat::from_data(TensorData::new(vec![total as f32], [1]));
        (value, grad.map(|g| grad_tensor(g, r, k)))
    }

    impl KdSqBackend for Flex {
        fn kd_sq_value(
            student: FloatTensor<Self>,
            teacher: FloatTensor<Self>,
            weights: FloatTensor<Self>,
            zero_inf: bool,
        ) -> FloatTensor<Self> {
            run_sq(student, teacher, weights, zero_inf, false).0
        }

        fn kd_sq_value_grad(
            student: FloatTensor<Self>,
            teacher: FloatTensor<Self>,
            weights: FloatTensor<Self>,
            zero_inf: bool,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            let (value, grad) = run_sq(student, teacher, weights, zero_inf, true);
            (value, grad.expect("gradient requested"))
        }
    }

    impl KdFusedBackend for Flex {
        fn kd_fused_values(
            student: FloatTensor<Self>,
            teacher: FloatTensor<Self>,
            labels: IntTensor<Self>,
            weights: FloatTensor<Self>,
            params: KernelParams,
        ) -> FloatTensor<Self> {
            run(student, teacher, labels, weights, params, false).0
        }

        fn kd_fused_values_grad(
            student: FloatTensor<Self>,
            teacher: FloatTensor<Self>,
            labels: IntTensor<Self>,
            weights: FloatTensor<Self>,
            params: KernelParams,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            let (values, grad) = run(student, teacher, labels, weights, params, true);
            (values, grad.expect("gradient requested"))
        }
    }
}

#[cfg(feature = "chunked")]
mod autodiff {
    use super::*;
    use burn::backend::autodiff::{
        Autodiff,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    };

    /// What the backward pass needs: the gradient computed in the forward pass for the common
    /// upstream `[1, 0, 0]` (d total), and the inputs to recompute it for any other upstream.
    #[derive(Debug)]
    struct KdFusedBackward;

    type State<B> = (
        Option<FloatTensor<B>>,
        FloatTensor<B>,
        FloatTensor<B>,
        IntTensor<B>,
        FloatTensor<B>,
        KernelParams,
    );

    /// The (few-element) upstream gradient of a fused loss, read to the host: the backward
    /// passes choose between the kept gradient, a scaled copy and a recomputation from it.
    fn upstream_on_host<B: Backend>(upstream: FloatTensor<B>) -> Vec<f32> {
        burn::tensor::try_read_sync(B::float_into_data(upstream))
            .expect("fused kernel: synchronous read of the upstream gradient")
            .expect("fused kernel: reading the upstream gradient")
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 upstream gradient")
    }

    /// The gradient kept from the forward pass times the upstream scalar `c` (as is for `c = 1`,
    /// the common `loss.backward()`: no copy).
    fn scaled<B: Backend>(stash: FloatTensor<B>, c: f32) -> FloatTensor<B> {
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
            let g = upstream_on_host::<B>(upstream);
            let grad = match (stash, g[1] == 0.0 && g[2] == 0.0) {
                // d total: the gradient was computed in the forward pass.
                (Some(stash), true) => scaled::<B>(stash, g[0]),
                // Any other upstream (the terms were used separately): recompute once.
                _ => {
                    let p = KernelParams {
                        grad_soft: g[0] * params.alpha + g[1],
                        grad_hard: g[0] * params.beta + g[2],
                        ..params
                    };
                    B::kd_fused_values_grad(student, teacher, labels, weights, p).1
                }
            };
            grads.register::<B>(node.id, grad);
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
            let teacher = teacher.into_primitive();
            let weights = weights.into_primitive();
            match KdFusedBackward
                .prepare::<C>([student.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let s = student.into_primitive();
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
                    prep.finish((Some(stash), s, teacher, labels, weights, params), values)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::kd_fused_values(
                    student.into_primitive(),
                    teacher,
                    labels,
                    weights,
                    params,
                )),
            }
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
            let c = upstream_on_host::<B>(upstream)[0];
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
}
