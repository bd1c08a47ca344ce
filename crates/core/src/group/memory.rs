//! The embeddings buffer of grouping, backed by transparent huge pages where the kernel allows.
//!
//! Why: the kNN refinement and the clustering read embedding rows in graph order, i.e. at
//! random. A 1M-face gallery is 2 GiB of embeddings; on 4 KiB pages every row read is a TLB
//! miss and a page walk through page tables that do not fit the caches either, so a 512-d dot
//! product cost about 1 us at 1M faces against well under 0.1 us at 100k, whose embeddings fit
//! the L3 (measured with the grouping bench, `RUST_LOG=facegroup_core=debug`). 2 MiB pages give
//! the TLB the reach of the whole buffer. Linux's default (`transparent_hugepage` =
//! `madvise`) only backs memory with huge pages where the program asks, before it is touched,
//! which is what [`embedding_buffer`] does. Elsewhere, or when the kernel refuses, it is an
//! ordinary `Vec`.

/// An empty `Vec` with room for `len` floats. On Linux, when that is at least two huge pages,
/// the aligned part of its (untouched) allocation is advised `MADV_HUGEPAGE`; advice only, the
/// contents and the `Vec`'s behaviour are those of any `Vec`.
pub fn embedding_buffer(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    advise_huge_pages(&mut v);
    v
}

const HUGE_PAGE: usize = 2 << 20;

#[cfg(target_os = "linux")]
fn advise_huge_pages(v: &mut Vec<f32>) {
    let start = v.as_mut_ptr() as usize;
    let end = start + v.capacity() * std::mem::size_of::<f32>();
    let (first, last) = (
        start.next_multiple_of(HUGE_PAGE),
        end / HUGE_PAGE * HUGE_PAGE,
    );
    if last >= first + 2 * HUGE_PAGE {
        // SAFETY: [first, last) lies inside the Vec's own allocation (page-aligned, as madvise
        // needs); MADV_HUGEPAGE changes how the kernel backs those pages, never their contents,
        // and an error (e.g. THP disabled) leaves ordinary pages.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_v: &mut Vec<f32>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_behaves_as_a_vec() {
        let mut v = embedding_buffer(3 * HUGE_PAGE);
        assert!(v.is_empty() && v.capacity() >= 3 * HUGE_PAGE);
        v.extend((0..3 * HUGE_PAGE).map(|i| i as f32));
        assert_eq!(v[12345], 12345.0);
        assert_eq!(embedding_buffer(0).capacity(), 0);
    }
}
