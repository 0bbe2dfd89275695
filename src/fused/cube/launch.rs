//! Host side of the launches: scalar slots, output buffers, cube counts, and the runs of the
//! row and top-k kernels with their on-device reduction.

use super::*;

pub(super) type CubeFloat = FloatTensor<CubeBackend>;

/// The launch scalars (`[SCALARS]`, see [`SC_INV_T`] and the following) and comptime kind of `p`.
pub(super) fn scalars(p: &KernelParams) -> (Vec<f32>, u32) {
    let (kind, (share_p, coef_p, coef_q)) = match p.kind {
        SoftKind::ForwardKl => (KIND_FORWARD, (0.0, 1.0, 0.0)),
        SoftKind::ReverseKl => (KIND_REVERSE, (1.0, 0.0, 1.0)),
        SoftKind::Mixture {
            teacher_share,
            teacher_coef,
            student_coef,
        } => (KIND_MIXTURE, (teacher_share, teacher_coef, student_coef)),
        SoftKind::TotalVariation => (KIND_TVD, (0.0, 0.0, 0.0)),
        SoftKind::SymmetricKl => (KIND_SYMMETRIC, (0.0, 0.0, 0.0)),
    };
    let share_q = 1.0 - share_p;
    let mut s = vec![0.0f32; SCALARS];
    s[SC_INV_T] = 1.0 / p.temperature;
    s[SC_SOFT_SCALE] = p.soft_scale;
    s[SC_SMOOTHING] = p.smoothing;
    s[SC_COEF_SOFT] = p.grad_soft;
    s[SC_COEF_HARD] = p.grad_hard;
    s[SC_SHARE_Q] = share_q;
    s[SC_LN_SHARE_P] = share_p.ln();
    s[SC_LN_SHARE_Q] = share_q.ln();
    s[SC_COEF_P] = coef_p;
    s[SC_COEF_Q] = coef_q;
    s[SC_NEG_INF] = f32::NEG_INFINITY;
    (s, kind)
}

/// An `f32` tensor of `values` on `device`.
pub(super) fn host_f32(values: Vec<f32>, device: &burn_cubecl::CubeDevice) -> CubeFloat {
    let n = values.len();
    CubeBackend::float_from_data(burn::tensor::TensorData::new(values, [n]), device)
}

/// What both row kernels write: per-row values `[2R]` (`f32`), the gradient `[R, V]` in the
/// student's dtype (or `[1, 1]` when none is written), and the launch shape.
pub(super) struct RowOutputs {
    pub(super) client: cubecl::client::Client,
    pub(super) rows_out: CubeFloat,
    pub(super) grad: CubeFloat,
    pub(super) rows: usize,
    pub(super) units: u32,
}

/// Allocates a row kernel's outputs for the contiguous `[R, V]` `student`.
pub(super) fn row_outputs(student: &CubeFloat, want_grad: bool) -> RowOutputs {
    let [r, v] = student.shape().dims::<2>();
    let (client, device) = (student.client.clone(), student.device.clone());
    let rows_out = empty_device_dtype(
        client.clone(),
        device.clone(),
        Shape::new([2 * r]),
        DType::F32,
    );
    let grad_shape = if want_grad { [r, v] } else { [1, 1] };
    let grad = empty_device_dtype(
        client.clone(),
        device,
        Shape::new(grad_shape),
        student.dtype,
    );
    RowOutputs {
        client,
        rows_out,
        grad,
        rows: r,
        units: if v <= SHORT_ROW { UNITS_SHORT } else { UNITS },
    }
}

/// One cube per row, spread over the grid's dimensions when the rows exceed the per-dimension
/// limit of a dispatch (65 535 on wgpu); extra cubes exit at once.
pub(super) fn row_cubes(out: &RowOutputs) -> CubeCount {
    cubecl::server::CubeCountSelection::new(&out.client, out.rows as u32).cube_count()
}

/// `[α·S + β·H, S, H]` (`f32`) from a row kernel's values, and its gradient when written.
pub(super) fn finish_rows(
    out: RowOutputs,
    alpha: f32,
    beta: f32,
    want_grad: bool,
) -> (CubeFloat, Option<CubeFloat>) {
    let device = out.rows_out.device.clone();
    let values = empty_device_dtype(
        out.client.clone(),
        device.clone(),
        Shape::new([3]),
        DType::F32,
    );
    reduce_rows_kernel::launch(
        &out.client,
        CubeCount::Static(1, 1, 1),
        CubeDim::new_1d(UNITS),
        out.rows_out.into_tensor_arg(),
        values.clone().into_tensor_arg(),
        host_f32(vec![alpha, beta], &device).into_tensor_arg(),
        UNITS,
        dtype_to_storage_type(DType::F32),
    );
    (values, want_grad.then_some(out.grad))
}

pub(super) fn run(
    student: CubeFloat,
    teacher: CubeFloat,
    labels: IntTensor<CubeBackend>,
    weights: CubeFloat,
    p: KernelParams,
    want_grad: bool,
) -> (CubeFloat, Option<CubeFloat>) {
    let student = into_contiguous(student);
    let teacher = into_contiguous(teacher);
    let labels = into_contiguous(labels);
    let weights = into_contiguous(weights);
    let out = row_outputs(&student, want_grad);
    let (sc, kind) = scalars(&p);
    let sc = host_f32(sc, &student.device);
    let dtypes = [
        dtype_to_storage_type(student.dtype),
        dtype_to_storage_type(DType::F32),
        dtype_to_storage_type(labels.dtype),
    ];
    if out.rows > 0 {
        kd_rows_kernel::launch(
            &out.client,
            row_cubes(&out),
            CubeDim::new_1d(out.units),
            student.into_tensor_arg(),
            teacher.into_tensor_arg(),
            labels.into_tensor_arg(),
            weights.into_tensor_arg(),
            out.rows_out.clone().into_tensor_arg(),
            out.grad.clone().into_tensor_arg(),
            sc.into_tensor_arg(),
            out.units,
            kind,
            p.has_hard,
            p.has_hard && p.temperature != 1.0,
            want_grad,
            dtypes,
        );
    }
    finish_rows(out, p.alpha, p.beta, want_grad)
}

pub(super) fn run_sparse(
    student: CubeFloat,
    indices: IntTensor<CubeBackend>,
    values: CubeFloat,
    weights: CubeFloat,
    p: KernelParams,
    want_grad: bool,
) -> (CubeFloat, Option<CubeFloat>) {
    let student = into_contiguous(student);
    let indices = into_contiguous(indices);
    let values = into_contiguous(values);
    let weights = into_contiguous(weights);
    let out = row_outputs(&student, want_grad);
    let sc = host_f32(scalars(&p).0, &student.device);
    let dtypes = [
        dtype_to_storage_type(student.dtype),
        dtype_to_storage_type(DType::F32),
        dtype_to_storage_type(indices.dtype),
    ];
    if out.rows > 0 {
        kd_sparse_kernel::launch(
            &out.client,
            row_cubes(&out),
            CubeDim::new_1d(out.units),
            student.into_tensor_arg(),
            indices.into_tensor_arg(),
            values.into_tensor_arg(),
            weights.into_tensor_arg(),
            out.rows_out.clone().into_tensor_arg(),
            out.grad.clone().into_tensor_arg(),
            sc.into_tensor_arg(),
            out.units,
            want_grad,
            dtypes,
        );
    }
    finish_rows(out, 1.0, 0.0, want_grad)
}

/// The dtypes this kernel reads on `device`: `f32`, and `f16` / `bf16` where the device's runtime
/// has the type (CUDA and ROCm both; wgpu `f16` with the `shader-f16` feature and never `bf16`:
/// WGSL has no such type, and Burn's fusion can hold a lazily cast `bf16` tensor on wgpu that
/// only a kernel reading it would reveal). `f64` takes the composed path, which computes in `f64`.
pub(super) fn computes(dtype: DType, device: &burn_cubecl::CubeDevice) -> bool {
    let ty = match dtype {
        DType::F32 => return true,
        DType::F16 => ElemType::Float(cubecl::ir::FloatKind::F16),
        DType::BF16 => ElemType::Float(cubecl::ir::FloatKind::BF16),
        _ => return false,
    };
    device.client().properties().supports_type(ty)
}
