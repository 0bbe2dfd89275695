//! A small cache of gradient buffers for the CPU kernel.
//!
//! A fresh multi-hundred-megabyte allocation costs one page fault per page on first touch (and
//! the kernel zeroes each page): for a `[4096, 32000]` gradient that is more time than the fused
//! kernel itself on a VM. Training calls the loss with the same shapes every step, so the buffer
//! of the previous step's gradient is handed back here when Burn drops that gradient, and reused:
//! its pages are already mapped. This is what PyTorch's CUDA caching allocator and XLA's BFC
//! allocator do for device memory.
//!
//! At most [`MAX_CACHED`] buffers of at least [`MIN_BYTES`] are kept (one logits tensor each;
//! a new size replaces the least recently returned one); [`clear_buffer_cache`] frees them.
//! Small buffers count too: a fresh 1 MB gradient (`[256, 1000]`) costs more in page faults
//! than the kernel computing it.

use std::sync::Mutex;

/// Buffers below this size are not worth caching (the allocator serves them from its arenas
/// without page faults).
const MIN_BYTES: usize = 64 << 10;
/// At most this many idle buffers are kept.
const MAX_CACHED: usize = 2;

static CACHE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// Owner of a gradient buffer inside a Burn tensor: returns it to the cache when dropped.
struct Pooled(Vec<f32>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        if let Ok(mut cache) = CACHE.lock() {
            if cache.len() == MAX_CACHED {
                cache.remove(0);
            }
            cache.push(buf);
        }
    }
}

/// A buffer of `n` `f32` whose contents are unspecified (the kernel overwrites every element).
pub(crate) fn take(n: usize) -> Vec<f32> {
    if n * 4 >= MIN_BYTES
        && let Ok(mut cache) = CACHE.lock()
        && let Some(i) = cache.iter().position(|b| b.len() == n)
    {
        return cache.remove(i);
    }
    grad_buffer(n)
}

/// Wraps a buffer from [`take`] as tensor bytes that return to the cache when dropped. Small
/// buffers are moved in as ordinary bytes.
pub(crate) fn into_bytes(buf: Vec<f32>) -> burn::tensor::Bytes {
    if buf.len() * 4 < MIN_BYTES {
        return burn::tensor::Bytes::from_elems(buf);
    }
    burn::tensor::Bytes::from_shared(
        bytes::Bytes::from_owner(Pooled(buf)),
        burn::tensor::AllocationProperty::Native,
    )
}

/// Frees the gradient buffers the fused CPU kernel keeps for reuse between training steps (at
/// most two, each the size of one logits tensor). Call it after training to return the memory.
pub fn clear_buffer_cache() {
    if let Ok(mut cache) = CACHE.lock() {
        cache.clear();
    }
}

/// A zeroed `f32` buffer for the gradient. Fresh pages of a large allocation cost a page fault
/// each on first touch (4 KiB pages: 128 Ki faults for a `[4096, 32000]` gradient, more than
/// the kernel's own time on a VM); on Linux the buffer is advised to use transparent huge pages,
/// 512× fewer faults. The advice is only a hint: the buffer is correct either way.
pub(crate) fn grad_buffer(n: usize) -> Vec<f32> {
    let buf = vec![0.0f32; n];
    #[cfg(target_os = "linux")]
    advise_huge_pages(&buf);
    buf
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn advise_huge_pages(buf: &[f32]) {
    const HUGE: usize = 2 << 20;
    let bytes = std::mem::size_of_val(buf);
    if bytes < 2 * HUGE {
        return;
    }
    let start = buf.as_ptr() as usize;
    let aligned = start.next_multiple_of(HUGE);
    let len = (start + bytes - aligned) / HUGE * HUGE;
    if len == 0 {
        return;
    }
    // SAFETY: madvise only advises the kernel about the range, which lies inside `buf`'s
    // allocation; it neither reads nor writes memory and cannot invalidate the slice.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
}
