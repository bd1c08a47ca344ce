//! Dense inner-product top-k: the kernel of every CPU kNN search in [`super::knn`] (the exact
//! graph, k-means training and the per-list searches; the list assignment is [`super::int8`]'s).
//!
//! Why not FAISS's `IndexFlatIP` or BLAS: Debian's OpenBLAS 0.3.21 does not know this
//! machine's CPU and falls back to its SSE3 ("Prescott") kernels, 14-18 G multiply-adds/s on
//! the 2 cores, and FAISS's flat search over it reached 9 G/s on a 500 x 2000 x 512 list search
//! (its OpenMP threads and OpenBLAS's also spin against each other). `matrixmultiply` picks
//! AVX-512 or AVX2+FMA kernels at run time (the release binary ships to other machines, so no
//! `target-cpu=native`), single-threaded per call; rayon runs one call per block of queries,
//! then keeps each query's best `k` with a sorted insert: most scores are rejected by one
//! compare.
//!
//! Deterministic: each score is computed by one call with a fixed summation order whatever the
//! thread timing, and each row is scanned in base order, equal scores keeping the lower base
//! index first.

use rayon::prelude::*;

/// Rows of queries (one rayon task) and of base vectors per product: a 1024 x 2048 score block
/// is 8 MiB per thread.
///
/// Why this shape: `matrixmultiply` packs the whole base block into its own layout on every
/// call, reading it from memory, while the query block it packs stays in the cache; so the
/// packing per query falls with the query block. With 256 x 4096 blocks packing was ~11% of a
/// 1M-face graph's CPU time (`perf`), the k-means assignment re-packing its 2,000 centroids for
/// every 256 faces. Block sizes do not change a result: each score is one kernel's sum over the
/// same `kc` chunks in the same order, and every row is scanned in base order.
const QUERY_BLOCK: usize = 1024;
const BASE_BLOCK: usize = 2048;
/// Smallest query block of a parallel search, which otherwise splits its queries into at least
/// two blocks per thread (a 600-face search would be one block, one thread).
const MIN_PARALLEL_BLOCK: usize = 64;

/// `out[i * n + j] = a_i . b_j` for `m = a.len() / dim` rows of `a` and `n = b.len() / dim`
/// rows of `b`, all row-major.
pub(crate) fn scores(a: &[f32], b: &[f32], dim: usize, out: &mut [f32]) {
    let (m, n) = (a.len() / dim.max(1), b.len() / dim.max(1));
    assert!(out.len() >= m * n, "score buffer too small");
    if m == 0 || n == 0 || dim == 0 {
        return;
    }
    let stride = |v: usize| isize::try_from(v).expect("row stride fits in isize");
    // SAFETY: `a` is m x dim and `b` n x dim row-major (b read as its dim x n transpose: row
    // stride 1, column stride dim), `out` holds at least m x n (checked above); matrixmultiply
    // reads only inside those bounds and writes only `out`'s first m x n entries.
    unsafe {
        matrixmultiply::sgemm(
            m,
            dim,
            n,
            1.0,
            a.as_ptr(),
            stride(dim),
            1,
            b.as_ptr(),
            1,
            stride(dim),
            0.0,
            out.as_mut_ptr(),
            stride(n),
            1,
        );
    }
}

/// For every row `q` of `queries`, the `k` rows of `base` with the highest inner product, most
/// similar first, into `neighbours` / `similarities` (`k` slots per query, filled with
/// `u32::MAX` / `-inf` where `base` has fewer). `skip(q, b)` leaves base row `b` out of query
/// `q`'s result (the query itself, in a self-search). Indices are rows of `base`.
///
/// `parallel`: one rayon task per block of queries; `false` runs on the calling thread only,
/// for callers that already run one search per rayon task (a nested parallel search lets a
/// waiting thread start another task's search, each holding its gathered vectors, so memory
/// grew with the number of tasks).
#[allow(clippy::too_many_arguments)]
pub(crate) fn top_k(
    queries: &[f32],
    base: &[f32],
    dim: usize,
    k: usize,
    skip: impl Fn(usize, usize) -> bool + Sync,
    neighbours: &mut [u32],
    similarities: &mut [f32],
    parallel: bool,
) {
    let (nq, nb) = (queries.len() / dim.max(1), base.len() / dim.max(1));
    neighbours[..nq * k].fill(u32::MAX);
    similarities[..nq * k].fill(f32::NEG_INFINITY);
    if k == 0 || nq == 0 || nb == 0 {
        return;
    }
    let bb = BASE_BLOCK.min(nb);
    let qb = if parallel {
        let per_thread = nq.div_ceil(2 * rayon::current_num_threads().max(1));
        per_thread.clamp(MIN_PARALLEL_BLOCK, QUERY_BLOCK)
    } else {
        QUERY_BLOCK
    };
    let run = |(blk, (nbr, sim)): (usize, (&mut [u32], &mut [f32]))| {
        let q0 = blk * qb;
        let rows = nbr.len() / k;
        SCORES.with_borrow_mut(|block| {
            // Every entry used is written by `scores` first (beta 0), so the buffer is reused
            // without clearing: the 2,000 list searches of a 1M-face graph allocated and
            // zeroed a fresh 4 MiB block each, 16 GB of memset and page faults in all.
            if block.len() < rows * bb {
                block.resize(rows * bb, 0.0);
            }
            for b0 in (0..nb).step_by(bb) {
                let b1 = (b0 + bb).min(nb);
                let width = b1 - b0;
                scores(
                    &queries[q0 * dim..(q0 + rows) * dim],
                    &base[b0 * dim..b1 * dim],
                    dim,
                    block,
                );
                for (r, ((nbr, sim), row)) in nbr
                    .chunks_exact_mut(k)
                    .zip(sim.chunks_exact_mut(k))
                    .zip(block.chunks(width))
                    .enumerate()
                {
                    for (j, &s) in row.iter().enumerate() {
                        if s > sim[k - 1] && !skip(q0 + r, b0 + j) {
                            super::knn::insert_sorted(nbr, sim, (b0 + j) as u32, s);
                        }
                    }
                }
            }
        });
    };
    let (nbr, sim) = (&mut neighbours[..nq * k], &mut similarities[..nq * k]);
    if parallel {
        nbr.par_chunks_mut(qb * k)
            .zip(sim.par_chunks_mut(qb * k))
            .enumerate()
            .for_each(run);
    } else {
        nbr.chunks_mut(qb * k)
            .zip(sim.chunks_mut(qb * k))
            .enumerate()
            .for_each(run);
    }
}

thread_local! {
    /// Each thread's score block (at most `QUERY_BLOCK x BASE_BLOCK` floats).
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        facegroup_testkit::Rng::new(seed).unit_rows(n, dim)
    }

    #[test]
    fn top_k_matches_brute_force_across_blocks() {
        // More base rows than one block and more queries than one block, so block merging runs.
        let dim = 16;
        let (nq, nb, k) = (QUERY_BLOCK + 7, BASE_BLOCK + 300, 5);
        let queries = unit_rows(nq, dim, 1);
        let base = unit_rows(nb, dim, 2);
        let mut nbr = vec![0u32; nq * k];
        let mut sim = vec![0f32; nq * k];
        top_k(
            &queries,
            &base,
            dim,
            k,
            |q, b| q == b,
            &mut nbr,
            &mut sim,
            true,
        );
        let (mut serial_nbr, mut serial_sim) = (vec![0u32; nq * k], vec![0f32; nq * k]);
        let skip = |q, b| q == b;
        let (serial_n, serial_s) = (&mut serial_nbr, &mut serial_sim);
        top_k(&queries, &base, dim, k, skip, serial_n, serial_s, false);
        assert_eq!(
            (&serial_nbr, &serial_sim),
            (&nbr, &sim),
            "serial = parallel"
        );
        for q in [0, 1, QUERY_BLOCK - 1, QUERY_BLOCK, nq - 1] {
            let qv = &queries[q * dim..(q + 1) * dim];
            let mut all: Vec<(f32, usize)> = (0..nb)
                .filter(|&b| b != q)
                .map(|b| (super::super::dot(qv, &base[b * dim..(b + 1) * dim]), b))
                .collect();
            all.sort_by(|x, y| y.0.total_cmp(&x.0));
            for (slot, &(s, b)) in all.iter().take(k).enumerate() {
                assert_eq!(nbr[q * k + slot], b as u32, "query {q} slot {slot}");
                assert!((sim[q * k + slot] - s).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn short_base_leaves_empty_slots() {
        let dim = 8;
        let queries = unit_rows(3, dim, 3);
        let base = unit_rows(2, dim, 4);
        let mut nbr = vec![0u32; 3 * 4];
        let mut sim = vec![0f32; 3 * 4];
        top_k(
            &queries,
            &base,
            dim,
            4,
            |_, _| false,
            &mut nbr,
            &mut sim,
            true,
        );
        for row in nbr.chunks_exact(4) {
            assert!(row[..2].iter().all(|&b| b < 2));
            assert_eq!(&row[2..], &[u32::MAX, u32::MAX]);
        }
    }
}
