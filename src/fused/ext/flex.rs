//! The fused operations on Flex: the CPU kernels on the tensors' host memory.

use super::*;
use crate::fused::kernel::run_rows;
use burn::backend::{DType, TensorMetadata};
use burn::tensor::TensorData;
use burn_flex::Flex;

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

impl crate::fused::route::KernelCaps for Flex {
    fn computes(dtype: DType, _kind: crate::fused::SoftKind, _device: &Self::Device) -> bool {
        dtype == DType::F32
    }

    fn computes_sparse(_dtype: DType, _device: &Self::Device) -> bool {
        false
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
    fn kd_scale_by(grad: FloatTensor<Self>, upstream: FloatTensor<Self>) -> FloatTensor<Self> {
        // On the CPU the upstream scalar is in host memory already.
        super::autodiff::scaled::<Self>(grad, super::autodiff::upstream_on_host::<Self>(upstream))
    }

    // The top-k kernel is CubeCL's: `KernelCaps::computes_sparse` is false for Flex, so the
    // routing never calls these.
    fn kd_sparse_values(
        _student: FloatTensor<Self>,
        _indices: IntTensor<Self>,
        _values: FloatTensor<Self>,
        _weights: FloatTensor<Self>,
        _params: KernelParams,
    ) -> FloatTensor<Self> {
        unreachable!("the top-k kernel is routed to CubeCL backends only")
    }

    fn kd_sparse_values_grad(
        _student: FloatTensor<Self>,
        _indices: IntTensor<Self>,
        _values: FloatTensor<Self>,
        _weights: FloatTensor<Self>,
        _params: KernelParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("the top-k kernel is routed to CubeCL backends only")
    }
}
