//! The CPU kernels' thread scheduler: rows split into blocks of consecutive rows, run on
//! rayon's global pool.

/// Number of row blocks run in parallel for `elements` logits: 1 below 32 Ki elements (waking a
/// pool thread costs more than it saves), else the machine's parallelism (`KD_NUM_THREADS`
/// overrides; the blocks run on rayon's global pool, sized by `RAYON_NUM_THREADS`).
pub(super) fn threads_for(elements: usize, rows: usize) -> usize {
    if elements < (1 << 15) || rows < 2 {
        return 1;
    }
    let n = std::env::var("KD_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    n.min(rows).max(1)
}

/// Splits `r` rows of `v` elements into [`threads_for`] blocks of consecutive rows and returns
/// `f(rows, grad rows)` of each block, in block order: block 0 on the calling thread's turn,
/// the others on rayon's global pool (threads that outlive the call). `grad`, when given, has
/// `r · v` entries; each block gets its rows.
pub(crate) fn par_row_blocks<T, F>(r: usize, v: usize, grad: Option<&mut [f32]>, f: F) -> Vec<T>
where
    T: Send + Default,
    F: Fn(std::ops::Range<usize>, Option<&mut [f32]>) -> T + Sync,
{
    let n = threads_for(r * v, r);
    let per = r.div_ceil(n).max(1);
    let blocks = r.div_ceil(per);
    let mut grads: Vec<Option<&mut [f32]>> = match grad {
        Some(g) => g.chunks_mut(per * v.max(1)).map(Some).collect(),
        None => (0..blocks).map(|_| None).collect(),
    };
    grads.resize_with(blocks, || None);
    let mut results: Vec<T> = (0..blocks).map(|_| T::default()).collect();
    let run = |i: usize, g: Option<&mut [f32]>| f(i * per..((i + 1) * per).min(r), g);
    in_parallel(&mut results, &mut grads, &run);
    results
}

/// Runs `f(i, grads[i])` for every block `i` into `results[i]`, on rayon's global pool.
#[cfg(feature = "cpu-kernel")]
pub(super) fn in_parallel<'g, T, F>(results: &mut [T], grads: &mut [Option<&'g mut [f32]>], f: &F)
where
    T: Send,
    F: Fn(usize, Option<&'g mut [f32]>) -> T + Sync,
{
    if results.len() == 1 {
        results[0] = f(0, grads[0].take());
        return;
    }
    let (first, rest) = results.split_first_mut().expect("at least one block");
    rayon_core::scope(|scope| {
        for (i, (res, g)) in rest.iter_mut().zip(grads[1..].iter_mut()).enumerate() {
            let g = g.take();
            scope.spawn(move |_| *res = f(i + 1, g));
        }
        *first = f(0, grads[0].take());
    });
}

/// Without the `flex` feature (no CPU backend to serve) the blocks run one after the other.
#[cfg(not(feature = "cpu-kernel"))]
pub(super) fn in_parallel<'g, T, F>(results: &mut [T], grads: &mut [Option<&'g mut [f32]>], f: &F)
where
    F: Fn(usize, Option<&'g mut [f32]>) -> T,
{
    for (i, (res, g)) in results.iter_mut().zip(grads.iter_mut()).enumerate() {
        *res = f(i, g.take());
    }
}
