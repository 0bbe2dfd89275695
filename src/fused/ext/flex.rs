//! The fused operations on Flex: the CPU kernels on the tensors' host memory.

use super::*;
use crate::fused::kernel::{run_rows, run_rows_in_place};
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
    let t = contiguous_f32(&teacher);
    let w = contiguous_f32(&weights);
    let y = labels_i64(&labels, r, params.has_hard);
    let values = |out: crate::fused::kernel::RowValues| {
        let total = f64::from(params.alpha) * out.soft + f64::from(params.beta) * out.hard;
        FlexFloat::from_data(TensorData::new(
            vec![total as f32, out.soft as f32, out.hard as f32],
            [3],
        ))
    };
    // A student handed over by value and owned by no one else (a chunk's logits in the LM
    // head's loop) takes its own gradient: no second `[R, V]` buffer.
    let mut student = student;
    if want_grad && let Some(buf) = own_rows(&mut student, r * v) {
        let out = run_rows_in_place(buf, &t, &y, &w, v, &params);
        return (values(out), Some(student));
    }
    let s = contiguous_f32(&student);
    let mut grad = want_grad.then(|| crate::fused::pool::take(r * v));
    let out = run_rows(&s, &t, &y, &w, v, &params, grad.as_deref_mut());
    (values(out), grad.map(|g| grad_tensor(g, r, v)))
}

/// `x`'s `n` f32 elements as a mutable slice when `x` is contiguous from offset 0, `f32` and the
/// only owner of its buffer; `None` otherwise.
fn own_rows(x: &mut FlexFloat, n: usize) -> Option<&mut [f32]> {
    if x.dtype() != DType::F32 || x.layout().contiguous_offsets() != Some((0, n)) {
        return None;
    }
    x.try_storage_mut::<f32>()
        .filter(|buf| buf.len() >= n)
        .map(|buf| &mut buf[..n])
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::kernel::SoftKind;

    fn tensor(rows: usize, v: usize, scale: f32) -> FlexFloat {
        let x: Vec<f32> = (0..rows * v)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) * scale)
            .collect();
        FlexFloat::from_data(TensorData::new(x, [rows, v]))
    }

    #[test]
    fn a_uniquely_owned_student_takes_its_gradient_and_a_shared_one_does_not() {
        let (r, v) = (3, 41);
        let params = KernelParams {
            kind: SoftKind::ForwardKl,
            temperature: 2.0,
            soft_scale: 4.0,
            has_hard: true,
            smoothing: 0.0,
            alpha: 0.5,
            beta: 0.5,
            grad_soft: 0.5,
            grad_hard: 0.5,
        };
        let labels = || IntTensor::<Flex>::from_data(TensorData::new(vec![1i64, 0, 40], [r]));
        let weights = || FlexFloat::from_data(TensorData::new(vec![1.0f32; r], [r]));
        let student = tensor(r, v, 0.3);
        let teacher = tensor(r, v, -0.2);
        let address = student.as_slice::<f32>().expect("contiguous").as_ptr();

        // Shared: the student is still held here, so the gradient gets its own buffer.
        let kept = student.clone();
        let (shared_values, shared_grad) =
            Flex::kd_fused_values_grad(kept, teacher.clone(), labels(), weights(), params);
        let shared_grad = shared_grad.as_slice::<f32>().expect("contiguous").to_vec();
        assert_eq!(
            student.as_slice::<f32>().expect("contiguous")[0],
            -8.0 * 0.3
        );

        // Unique: the gradient is written over the student's own buffer.
        let (values, grad) =
            Flex::kd_fused_values_grad(student, teacher, labels(), weights(), params);
        let got = grad.as_slice::<f32>().expect("contiguous");
        assert_eq!(
            got.as_ptr(),
            address,
            "the gradient is not in the student's buffer"
        );
        assert_eq!(got, &shared_grad[..]);
        assert_eq!(
            values.as_slice::<f32>().expect("values"),
            shared_values.as_slice::<f32>().expect("values")
        );
    }
}
