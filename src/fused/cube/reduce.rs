//! The small kernels after the rows: the kept gradient scaled by the upstream scalar, and the
//! per-row values summed into the three reduced terms on the device.

use super::*;

/// `grad · c` in place, `c = upstream[0]` read on the device: every cube leaves at once when
/// `c = 1` (the usual `loss.backward()`), so that case costs a launch and no memory traffic, and
/// no case reads `c` on the host.
#[cube(launch)]
pub(super) fn scale_by_upstream_kernel<E: Float, U: Float>(
    grad: &mut Tensor<E>,
    upstream: &Tensor<U>,
    #[define(E, U)] _dtypes: [ElemType; 2],
) {
    let c = f32::cast_from(upstream[0]);
    if c == 1.0 {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    if i < grad.len() {
        grad[i] = E::cast_from(f32::cast_from(grad[i]) * c);
    }
}

/// `[α·S + β·H, S, H]` (`f32`) from the per-row values: one cube, no host round-trip.
#[cube(launch)]
pub(super) fn reduce_rows_kernel<F: Float>(
    rows_out: &Tensor<F>, // [2R]
    out: &mut Tensor<F>,  // [3]
    ab: &Tensor<F>,       // [2]: α, β
    #[comptime] units: u32,
    #[define(F)] _dtype: ElemType,
) {
    let rows = rows_out.shape(0) / 2;
    let u = UNIT_POS_X as usize;
    let mut shared = Shared::<[F]>::new_slice(units as usize);
    let mut soft = F::new(0.0);
    let mut hard = F::new(0.0);
    let mut i = u;
    while i < rows {
        soft += rows_out[i];
        hard += rows_out[rows + i];
        i += CUBE_DIM_X as usize;
    }
    let soft = block_sum::<F>(&mut shared, soft);
    let hard = block_sum::<F>(&mut shared, hard);
    if u == 0 {
        out[0] = ab[0] * soft + ab[1] * hard;
        out[1] = soft;
        out[2] = hard;
    }
}
