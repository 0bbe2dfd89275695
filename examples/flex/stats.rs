//! Summary statistics over seeds, shared by the examples that repeat a run (`digits`,
//! `on_policy`).

/// Mean and sample standard deviation (0 for one value).
pub fn mean_spread(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let s = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>()
        / v.len().max(2).saturating_sub(1) as f64)
        .sqrt();
    (m, s)
}
