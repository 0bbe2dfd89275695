//! The backend impls: which dtypes the runtime computes (`KernelCaps`, plain and under
//! Burn's `fusion`) and the fused operations of `KdFusedBackend` on `CubeBackend`.

use super::*;

impl KernelCaps for CubeBackend {
    fn computes(dtype: DType, _kind: SoftKind, device: &Self::Device) -> bool {
        computes(dtype, device)
    }

    fn computes_sparse(dtype: DType, device: &Self::Device) -> bool {
        computes(dtype, device)
    }
}

// Generic over the fused backend: `CubeBackend` is a `FusionBackend` only when the application's
// Burn has `fusion`, and this impl must compile either way.
impl<B: KernelCaps + burn_fusion::FusionBackend> KernelCaps for burn_fusion::Fusion<B> {
    fn computes(dtype: DType, kind: SoftKind, device: &Self::Device) -> bool {
        B::computes(dtype, kind, device)
    }

    fn computes_sparse(dtype: DType, device: &Self::Device) -> bool {
        B::computes_sparse(dtype, device)
    }
}

/// [`scale_by_upstream_kernel`] on the kept gradient (a copy first if it is shared).
pub(super) fn scale_by(grad: CubeFloat, upstream: CubeFloat) -> CubeFloat {
    let grad = if grad.can_mut() && grad.is_contiguous() {
        grad
    } else {
        burn_cubecl::kernel::into_contiguous(CubeBackend::float_add_scalar(grad, 0.0.into()))
    };
    let upstream = into_contiguous(upstream);
    let n = grad.shape().num_elements();
    if n > 0 {
        let client = grad.client.clone();
        let cubes = n.div_ceil(UNITS as usize) as u32;
        scale_by_upstream_kernel::launch(
            &client,
            cubecl::server::CubeCountSelection::new(&client, cubes).cube_count(),
            CubeDim::new_1d(UNITS),
            grad.clone().into_tensor_arg(),
            upstream.clone().into_tensor_arg(),
            [
                dtype_to_storage_type(grad.dtype),
                dtype_to_storage_type(upstream.dtype),
            ],
        );
    }
    grad
}

impl KdFusedBackend for CubeBackend {
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
        scale_by(grad, upstream)
    }

    fn kd_sparse_values(
        student: FloatTensor<Self>,
        indices: IntTensor<Self>,
        values: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        params: KernelParams,
    ) -> FloatTensor<Self> {
        run_sparse(student, indices, values, weights, params, false).0
    }

    fn kd_sparse_values_grad(
        student: FloatTensor<Self>,
        indices: IntTensor<Self>,
        values: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        params: KernelParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, grad) = run_sparse(student, indices, values, weights, params, true);
        (out, grad.expect("gradient requested"))
    }
}
