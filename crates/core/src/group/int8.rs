//! Nearest centroids in 8-bit integers: the list assignment of the partitioned kNN search
//! ([`super::knn`]).
//!
//! Why: the assignment is one of the search's two terms that grow as `N^2` (each face against
//! `N / list_size` centroids), 13.8 of a 1M-face graph's 62 s in `f32`, and the `f32` products
//! already run at the machine's multiply-add peak. Which lists a face goes to needs a ranking
//! of centroids, not exact cosines (a face in a slightly worse list is found by the spill and
//! the refinement), so 8-bit vectors serve, and AVX-512 VNNI's `vpdpbusd` does 64 of their
//! multiply-adds per instruction where `f32` FMA does 16. The graph's own edges stay exact
//! `f32` ([`super::dense`]), and so does the k-means training (in 8 bits it cost recall:
//! `docs/scale.md`).
//!
//! Quantisation is per vector and symmetric: `q = round(x / s)` with `s = max |x| / 127`.
//! `vpdpbusd` multiplies unsigned by signed bytes, so centroids are stored offset by 128
//! (`u = q + 128`, 1..=255) and the offset's share, `128 * sum(q_face)`, is subtracted; a score
//! is `s_face * s_centroid * (sum(q_face * u) - 128 * sum(q_face))`.
//!
//! Same results on every machine: the integer sums are exact in any order, so the VNNI kernel
//! and the portable loop (machines without it) give the same integers, and the scores are
//! computed from them by the same `f32` operations. Ranking ties keep the lower centroid first.

use rayon::prelude::*;

/// Centroids per kernel lane group (one 512-bit register of `i32` sums).
const LANES: usize = 16;
/// Faces per kernel tile; a tile's sums live in `TILE_ROWS x 2` registers.
const TILE_ROWS: usize = 8;
/// Faces per rayon task (quantised: 256 KiB at 512 dimensions).
const TASK_ROWS: usize = 512;

/// Centroids quantised once and laid out for the kernel, searched by many faces.
pub(crate) struct Centroids {
    /// Groups of [`LANES`] centroids; in each, for every 4 dimensions, the 16 centroids' 4
    /// offset bytes side by side (64 bytes, one register; [`word_at`]). Padding is all 128.
    packed: Vec<u8>,
    scale: Vec<f32>,
    n: usize,
    /// Dimensions padded to a multiple of 4.
    dim4: usize,
}

impl Centroids {
    /// `centroids`: `n x dim` row-major.
    pub(crate) fn new(centroids: &[f32], dim: usize) -> Self {
        let n = centroids.len() / dim.max(1);
        let dim4 = dim.div_ceil(4) * 4;
        let mut packed = vec![128u8; n.div_ceil(LANES) * LANES * dim4];
        let mut scale = vec![0f32; n];
        let mut q = vec![0i8; dim];
        for (c, row) in centroids.chunks_exact(dim).enumerate() {
            scale[c] = quantise(row, &mut q);
            for (d, &q) in q.iter().enumerate() {
                packed[word_at(c / LANES, d / 4, dim4) + (c % LANES) * 4 + d % 4] =
                    (q as i16 + 128) as u8;
            }
        }
        Self {
            packed,
            scale,
            n,
            dim4,
        }
    }

    /// Centroids rounded up to whole lane groups: the row length of the raw score buffer.
    fn width(&self) -> usize {
        self.n.div_ceil(LANES) * LANES
    }
}

/// Where lane group `g`'s 64 bytes for dimensions `4 k4 .. 4 k4 + 4` start in
/// [`Centroids::packed`].
fn word_at(g: usize, k4: usize, dim4: usize) -> usize {
    (g * dim4 / 4 + k4) * LANES * 4
}

/// For every row of `queries` (`dim` floats each), the `k` centroids with the highest
/// quantised inner product, best first, into `neighbours` (`k` slots per query; `u32::MAX`
/// where there are fewer centroids). Parallel over blocks of queries.
pub(crate) fn nearest(
    queries: &[f32],
    dim: usize,
    centroids: &Centroids,
    k: usize,
    neighbours: &mut [u32],
) {
    let nq = queries.len() / dim.max(1);
    neighbours[..nq * k].fill(u32::MAX);
    if k == 0 || nq == 0 || centroids.n == 0 {
        return;
    }
    let vnni = has_vnni();
    neighbours[..nq * k]
        .par_chunks_mut(TASK_ROWS * k)
        .enumerate()
        .for_each(|(task, out)| {
            let q0 = task * TASK_ROWS;
            let rows = out.len() / k;
            let width = centroids.width();
            let mut scores = vec![f32::NEG_INFINITY; k];
            let mut raw = vec![0i32; TILE_ROWS * width];
            let mut tile = vec![0i8; TILE_ROWS * centroids.dim4];
            for t0 in (0..rows).step_by(TILE_ROWS) {
                let t1 = (t0 + TILE_ROWS).min(rows);
                let x = &queries[(q0 + t0) * dim..(q0 + t1) * dim];
                let face = quantise_tile(x, dim, centroids.dim4, &mut tile);
                raw_scores(&tile, centroids, vnni, &mut raw);
                for r in t0..t1 {
                    let (s_face, offset) = face[r - t0];
                    let nb = &mut out[r * k..(r + 1) * k];
                    scores.fill(f32::NEG_INFINITY);
                    let row = &raw[(r - t0) * width..(r - t0) * width + centroids.n];
                    for (c, (&v, &s_c)) in row.iter().zip(&centroids.scale).enumerate() {
                        let score = (v - offset) as f32 * s_c * s_face;
                        if score > scores[k - 1] {
                            super::knn::insert_sorted(nb, &mut scores, c as u32, score);
                        }
                    }
                }
            }
        });
}

/// Whether this CPU runs the VNNI kernel.
fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Quantises up to [`TILE_ROWS`] faces (`dim` floats each) into `tile` (`dim4` bytes a face,
/// zero padding; unused faces all zero) and returns each face's `(s, 128 * sum(q))`.
fn quantise_tile(
    faces: &[f32],
    dim: usize,
    dim4: usize,
    tile: &mut [i8],
) -> [(f32, i32); TILE_ROWS] {
    tile.fill(0);
    let mut out = [(0f32, 0i32); TILE_ROWS];
    for ((x, q), out) in faces
        .chunks_exact(dim)
        .zip(tile.chunks_exact_mut(dim4))
        .zip(&mut out)
    {
        let s = quantise(x, &mut q[..dim]);
        *out = (s, q.iter().map(|&v| v as i32).sum::<i32>() * 128);
    }
    out
}

/// `q = round(x / s)`, `s = max |x| / 127`; returns `s` (0 for a zero vector).
fn quantise(x: &[f32], q: &mut [i8]) -> f32 {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max <= 0.0 || !max.is_finite() {
        q.fill(0);
        return 0.0;
    }
    let s = max / 127.0;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v / s).round().clamp(-127.0, 127.0) as i8;
    }
    s
}

/// `raw[r * width + c] = sum_d tile[r][d] * u[c][d]` for the [`TILE_ROWS`] faces of `tile`
/// (`dim4` bytes each) and every centroid `c` (`width` = centroids rounded up to [`LANES`]).
fn raw_scores(tile: &[i8], centroids: &Centroids, vnni: bool, raw: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if vnni {
        // SAFETY: the CPU has AVX-512F and VNNI (checked by `has_vnni`); the kernel reads
        // `tile` (TILE_ROWS x dim4) and `packed` (groups x LANES x dim4) and writes `raw`
        // (TILE_ROWS x groups x LANES) within their lengths, asserted inside.
        unsafe { raw_scores_vnni(tile, centroids, raw) };
        return;
    }
    let _ = vnni;
    let (dim4, width) = (centroids.dim4, centroids.width());
    for (r, face) in tile.chunks_exact(dim4).enumerate() {
        for c in 0..centroids.n {
            let lane = (c % LANES) * 4;
            raw[r * width + c] = face
                .chunks_exact(4)
                .enumerate()
                .map(|(k4, f)| {
                    let at = word_at(c / LANES, k4, dim4) + lane;
                    f.iter()
                        .zip(&centroids.packed[at..at + 4])
                        .map(|(&f, &u)| f as i32 * u as i32)
                        .sum::<i32>()
                })
                .sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn raw_scores_vnni(tile: &[i8], centroids: &Centroids, raw: &mut [i32]) {
    use std::arch::x86_64::*;
    let dim4 = centroids.dim4;
    let width = centroids.width();
    let groups = width / LANES;
    assert!(tile.len() >= TILE_ROWS * dim4);
    assert!(centroids.packed.len() >= groups * LANES * dim4);
    assert!(raw.len() >= TILE_ROWS * width);
    // A face's 4 bytes at `k4` as one broadcastable word (inside `tile`, asserted above).
    let face = |r: usize, k4: usize| -> i32 {
        std::ptr::read_unaligned(tile.as_ptr().add(r * dim4 + k4 * 4).cast::<i32>())
    };
    // Two lane groups (32 centroids) at a time: 16 accumulators, 2 loads and 8 broadcasts per
    // 4 dimensions; an odd last group runs alone.
    let mut g = 0;
    while g < groups {
        let pair = if g + 1 < groups { 2 } else { 1 };
        let mut acc = [[_mm512_setzero_si512(); 2]; TILE_ROWS];
        for k4 in 0..dim4 / 4 {
            let mut cents = [_mm512_setzero_si512(); 2];
            for (p, c) in cents.iter_mut().enumerate().take(pair) {
                let at = word_at(g + p, k4, dim4);
                *c = _mm512_loadu_si512(centroids.packed[at..at + 64].as_ptr().cast());
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let f = _mm512_set1_epi32(face(r, k4));
                for p in 0..pair {
                    acc[p] = _mm512_dpbusd_epi32(acc[p], cents[p], f);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (p, acc) in acc.iter().enumerate().take(pair) {
                let at = r * width + (g + p) * LANES;
                _mm512_storeu_si512(raw[at..at + LANES].as_mut_ptr().cast(), *acc);
            }
        }
        g += pair;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        facegroup_testkit::Rng::new(seed).unit_rows(n, dim)
    }

    #[test]
    fn kernel_and_portable_loop_give_the_same_integers() {
        // 37 centroids: two full lane groups and a partial, odd one; 99 dimensions: a padded
        // last word.
        let dim = 99;
        let cents = Centroids::new(&unit_rows(37, dim, 1), dim);
        let mut tile = vec![0i8; TILE_ROWS * cents.dim4];
        quantise_tile(&unit_rows(TILE_ROWS, dim, 2), dim, cents.dim4, &mut tile);
        let width = cents.width();
        let mut portable = vec![0i32; TILE_ROWS * width];
        let mut fast = vec![0i32; TILE_ROWS * width];
        raw_scores(&tile, &cents, false, &mut portable);
        raw_scores(&tile, &cents, has_vnni(), &mut fast);
        for r in 0..TILE_ROWS {
            assert_eq!(
                &portable[r * width..r * width + cents.n],
                &fast[r * width..r * width + cents.n],
                "face {r}"
            );
        }
    }

    #[test]
    fn nearest_ranks_like_exact_cosine() {
        let dim = 64;
        let (nq, nc, k) = (TASK_ROWS + 13, 50, 3);
        let queries = unit_rows(nq, dim, 3);
        let base = unit_rows(nc, dim, 4);
        let mut got = vec![0u32; nq * k];
        nearest(&queries, dim, &Centroids::new(&base, dim), k, &mut got);
        let mut same_best = 0;
        for (q, row) in got.chunks_exact(k).enumerate() {
            let x = &queries[q * dim..(q + 1) * dim];
            let cos =
                |c: u32| super::super::dot(x, &base[c as usize * dim..(c as usize + 1) * dim]);
            let mut exact: Vec<u32> = (0..nc as u32).collect();
            exact.sort_by(|&a, &b| cos(b).total_cmp(&cos(a)));
            same_best += usize::from(row[0] == exact[0]);
            // Whatever the rounding, each pick is within quantisation error of the true rank.
            for &c in row {
                assert!(c < nc as u32);
                assert!(cos(c) >= cos(exact[k - 1]) - 0.02, "query {q}");
            }
        }
        assert!(
            same_best * 100 >= nq * 95,
            "best centroid agreed {same_best} / {nq}"
        );
    }

    #[test]
    fn fewer_centroids_than_k_leave_empty_slots() {
        let dim = 8;
        let mut got = vec![0u32; 2 * 4];
        let cents = Centroids::new(&unit_rows(2, dim, 5), dim);
        nearest(&unit_rows(2, dim, 6), dim, &cents, 4, &mut got);
        for row in got.chunks_exact(4) {
            assert!(row[..2].iter().all(|&c| c < 2));
            assert_eq!(&row[2..], &[u32::MAX, u32::MAX]);
        }
    }
}
