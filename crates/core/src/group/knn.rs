//! The k-nearest-neighbour graph over unit embeddings that grouping works on.
//!
//! Inner product of L2-normalised vectors is cosine similarity, so the graph is built with
//! inner-product search. Three regimes, by the number of faces `N`:
//!
//! - **Exact** up to [`KnnConfig::exact_max`] faces: `N^2 d` multiply-adds as dense matrix
//!   products ([`super::dense`]). The labelled eval sets and every personal library take this
//!   path, so their grouping does not depend on any approximation below.
//! - **Partitioned + refined** above it, on the CPU ([`partitioned_graph`], then [`refine`]).
//! - **GPU** with the `gpu` feature and [`KnnConfig::gpu`]: exact search with fp16 vectors up to
//!   [`KnnConfig::gpu_exact_max`] faces, an IVF index trained and searched on the GPU above
//!   ([`gpu_search`]); the CPU only refines.
//!
//! The CPU paths are pure Rust over `matrixmultiply` (AVX-512 or AVX2+FMA picked at run time):
//! FAISS is only the GPU's, and the CPU results do not depend on whether it is built in. They
//! ran on FAISS's flat index over Debian's OpenBLAS before, which does not recognise this
//! machine's CPU and fell back to SSE3 kernels: the same 1M-face graph took 220 s, now 80 s.
//!
//! # Why partitioned + refined, and what it costs
//!
//! What grouping needs from the graph is the *same-person* edges (cos >= ~0.3): merges only
//! follow edges at or above [`super::GroupConfig::link_threshold`] (0.20). Those edges have
//! a structure a generic ANN index does not exploit: one person's faces are all close to each
//! other, so an edge a first pass misses is almost always the neighbour of a neighbour that it
//! found.
//!
//! 1. **Lists of bounded size.** Spherical k-means with `L = N / list_size` centroids
//!    ([`KnnConfig::list_size`]), trained on [`KnnConfig::train_per_list`] strided faces per
//!    centroid. The old design used `2 sqrt(N)` lists, so a list held `sqrt(N) / 2` faces from
//!    ever more people and the chance that two faces of one person share a list fell with `N`
//!    (same-person edge recall 0.98 at 100k, 0.56 at 1M). A bounded list holds a bounded number of
//!    people whatever `N`, which was meant to keep that chance, and the recall, put; measured, it
//!    only slows the fall (with spill 4: 0.979 at 100k, 0.974 at 300k, 0.839 at 1M): a person
//!    without a centroid of its own has its faces' list rankings decided half by its noise, and
//!    with `N / list_size` lists two of its faces meet in one less often (`docs/scale.md`). The
//!    spill below is what buys it back: 8 lists per face give 0.965 at 1M.
//! 2. **Spill.** Each face is stored in its [`KnnConfig::partition_spill`] nearest lists and
//!    searched, exactly (one dense matrix product per list), against the faces stored in its
//!    nearest list; the graph is then symmetrised ([`symmetrise`]): an edge is lost only when both
//!    directions missed it.
//! 3. **Refinement** ([`refine`], NN-descent's local join): for every face, the neighbours of its
//!    first [`KnnConfig::refine_fanout`] neighbours (edges >= [`KnnConfig::refine_min_similarity`]
//!    only) are scored with exact dot products and replace worse neighbours;
//!    [`KnnConfig::refine_rounds`] rounds. A person whose faces fell into several lists is joined
//!    up as soon as one face of each part found one face of another.
//!
//! Cost in multiply-adds, `T = train_per_list`, `I` k-means iterations, `s` spill, `f` fanout,
//! `r` rounds:
//!
//! ```text
//! train   T L * L d * I   = T I d N^2 / list_size^2
//! assign  N * L d         =     d N^2 / list_size
//! search  N * s list_size d
//! refine  r N f^2 d       (candidates are de-duplicated: far fewer for small persons)
//! ```
//!
//! Search and refinement are linear in `N`; training and assignment grow as `N^2` but with a
//! `1 / list_size` factor. With the defaults (`list_size` 500, `T` 32, `I` 5, `s` 8, `f` 12):
//! at 100k faces train 3.3e9, assign 1.0e10, search 2.0e11 multiply-adds; at 1M faces train
//! 3.3e11, assign 1.0e12, search 2.2e12. The assignment runs in 8-bit integers
//! ([`super::int8`]: AVX-512 VNNI does 4x the multiply-adds of `f32` per instruction, and a
//! list choice needs a ranking, not exact cosines); the graph's edges are exact `f32`.
//! Measured at 1M: train 4.4 s, assign 5.1 s, search 32 s (13.8 s assigning in `f32`, and
//! 8.8 s training with 10 iterations, which bought no recall: 0.968 both ways). Past a few
//! million the quadratic terms dominate and the GPU path or the sharded build of
//! `docs/scale.md` takes over. A two-level quantizer (centroids grouped under `sqrt(L)` coarse
//! ones) was tried for the assignment: on the bench's uniformly spread persons the centroids
//! have no coarse structure to exploit and recall fell to 0.64.
//! Measured figures: `docs/scale.md`. Memory: the embeddings (`N d` floats, never copied), the
//! graph (`N k` x 8 bytes, refined in place, [`REFINE_BLOCK`] rows at a time) and the vectors
//! of the lists being searched ([`LISTS_PER_ROUND`] lists at a time, in parallel: one list is too
//! small a product to keep two cores busy). The embeddings should come from
//! [`super::embedding_buffer`] (huge pages: the refinement reads rows at random).
//! Deterministic: k-means from a fixed strided sample and start, each face's list searched by
//! one task, refinement blocks in order with their rows computed from the graph as the block
//! found it.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::GroupError;

/// How the kNN graph is searched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KnnConfig {
    /// Neighbours per face. Default 32: merges only follow graph edges, so `k` bounds how many
    /// clusters a face can be compared with; 32 covers a person's near-duplicates plus the
    /// next candidates without the graph (N x k) growing large.
    pub k: usize,
    /// Largest number of faces searched exactly (`IndexFlatIP`, O(N^2 d) time, O(N d) memory).
    /// Default 50 000, a large personal library, searched in well under a minute on a laptop CPU.
    pub exact_max: usize,
    /// Faces per k-means list of the CPU search above `exact_max` (the number of lists is
    /// `N / list_size`). Bounded so that a list holds a bounded number of people at any `N`.
    pub list_size: usize,
    /// Faces per list the k-means trains on (a strided sample of `train_per_list` x lists).
    pub train_per_list: usize,
    /// How many of its nearest lists each face is stored in; a face is searched against the faces
    /// stored in its own nearest list. Search time grows linearly with it.
    pub partition_spill: usize,
    /// Neighbour-of-neighbour rounds after the partitioned search (0: none).
    pub refine_rounds: usize,
    /// Neighbours of a face, and of each of them, that a refinement round looks through.
    pub refine_fanout: usize,
    /// Edges below this similarity are not followed by the refinement. Default 0.2, the default
    /// [`super::GroupConfig::link_threshold`]: clustering follows no weaker edge.
    pub refine_min_similarity: f32,
    /// Inverted lists the GPU IVF index (`gpu` feature, above `gpu_exact_max`) probes per query.
    pub ivf_nprobe: usize,
    /// Largest number of faces the GPU searches exactly (fp16 vectors: 1 KiB a face, so 4M faces
    /// take 4 GiB of GPU memory and `N^2 d` = 8e15 multiply-adds, minutes on one GPU).
    pub gpu_exact_max: usize,
    /// Search on the GPU (only with the `gpu` feature; ignored otherwise).
    pub gpu: bool,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self {
            k: 32,
            exact_max: 50_000,
            list_size: LIST_SIZE,
            train_per_list: TRAIN_PER_LIST,
            partition_spill: SPILL,
            refine_rounds: REFINE_ROUNDS,
            refine_fanout: REFINE_FANOUT,
            refine_min_similarity: 0.2,
            ivf_nprobe: 32,
            gpu_exact_max: 4_000_000,
            gpu: cfg!(feature = "gpu"),
        }
    }
}

/// Defaults of the partitioned search, chosen with the `grouping` bench at 100k uniform faces
/// (same-person edge recall after refinement: lists of 1000 / spill 2: 0.847; 500 / 4: 0.979;
/// 158 / 2: 0.945; 158 / 4: 0.989, but 158-face lists mean 6,300 lists at 1M and 4x the
/// training and assignment of 500), then the spill at 1M uniform faces (4: 0.849, 8: 0.965;
/// 4 with 4 refinement rounds: 0.869, the rounds converge on a person's disconnected parts).
const LIST_SIZE: usize = 500;
const TRAIN_PER_LIST: usize = 32;
const SPILL: usize = 8;
const REFINE_ROUNDS: usize = 2;
const REFINE_FANOUT: usize = 12;
/// k-means iterations of the partitioned search (10 gave the same 1M-face recall, 0.968, in
/// twice the training time).
const TRAIN_ITERS: u32 = 5;
/// Lists searched in parallel by the partitioned search.
const LISTS_PER_ROUND: usize = 16;

/// `k` nearest other faces of every face, most similar first. Row `i` holds `k` slots;
/// unused slots (fewer than `k` other faces) have `u32::MAX` and similarity `-inf`.
#[derive(Debug, Clone)]
pub struct KnnGraph {
    pub k: usize,
    pub neighbours: Vec<u32>,
    pub similarities: Vec<f32>,
}

impl KnnGraph {
    pub fn len(&self) -> usize {
        self.neighbours.len().checked_div(self.k).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.neighbours.is_empty()
    }

    /// Valid (neighbour, similarity) pairs of face `i`.
    pub fn row(&self, i: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let r = i * self.k..(i + 1) * self.k;
        self.neighbours[r.clone()]
            .iter()
            .zip(&self.similarities[r])
            .filter(|(&n, _)| n != u32::MAX)
            .map(|(&n, &s)| (n as usize, s))
    }

    /// Builds the graph of `n = data.len() / dim` unit vectors stored row-major.
    pub fn build(data: &[f32], dim: usize, cfg: &KnnConfig) -> Result<Self, GroupError> {
        let n = data.len() / dim.max(1);
        let k = cfg.k.min(n.saturating_sub(1));
        if n == 0 || k == 0 {
            return Ok(Self {
                k,
                neighbours: Vec::new(),
                similarities: Vec::new(),
            });
        }
        if !(cfg!(feature = "gpu") && cfg.gpu && n > cfg.exact_max) {
            if n > cfg.exact_max {
                let mut graph = partitioned_graph(data, dim, n, k, cfg);
                refine(&mut graph, data, dim, cfg);
                return Ok(graph);
            }
            let mut graph = Self {
                k,
                neighbours: vec![u32::MAX; n * k],
                similarities: vec![f32::NEG_INFINITY; n * k],
            };
            super::dense::top_k(
                data,
                data,
                dim,
                k,
                |q, b| q == b,
                &mut graph.neighbours,
                &mut graph.similarities,
                true,
            );
            return Ok(graph);
        }
        // The GPU. One extra hit: the face itself is normally its own best match and is dropped.
        let (sims, labels) = search(data, dim, n, k + 1, cfg)?;
        let mut neighbours = vec![u32::MAX; n * k];
        let mut similarities = vec![f32::NEG_INFINITY; n * k];
        neighbours
            .par_chunks_mut(k)
            .zip(similarities.par_chunks_mut(k))
            .enumerate()
            .for_each(|(i, (nb, sm))| {
                let hits = labels[i * (k + 1)..(i + 1) * (k + 1)]
                    .iter()
                    .zip(&sims[i * (k + 1)..(i + 1) * (k + 1)])
                    .filter(|(&l, _)| l >= 0 && l as usize != i && (l as usize) < n)
                    .take(k);
                for (slot, (&l, &s)) in hits.enumerate() {
                    nb[slot] = l as u32;
                    sm[slot] = s;
                }
            });
        let mut graph = Self {
            k,
            neighbours,
            similarities,
        };
        if gpu_ivf(n, cfg) {
            // Only the GPU's IVF index is approximate here; the exact searches need no refining.
            refine(&mut graph, data, dim, cfg);
        }
        Ok(graph)
    }
}

/// Whether `n` faces go to the GPU's (approximate) IVF index.
fn gpu_ivf(n: usize, cfg: &KnnConfig) -> bool {
    cfg!(feature = "gpu") && cfg.gpu && n > cfg.exact_max && n > cfg.gpu_exact_max
}

/// Raw `(similarities, labels)` of the `k` best matches of every vector, row-major, on the GPU
/// (the CPU searches are in [`KnnGraph::build`]).
#[cfg(feature = "faiss")]
fn search(
    data: &[f32],
    dim: usize,
    n: usize,
    k: usize,
    cfg: &KnnConfig,
) -> Result<(Vec<f32>, Vec<i64>), GroupError> {
    let d = u32::try_from(dim).map_err(|_| GroupError::Faiss(format!("dimension {dim}")))?;
    let result = gpu_search(data, d, n, k, cfg)?;
    Ok((
        result.distances,
        result
            .labels
            .iter()
            .map(|l| l.get().map_or(-1, |v| v as i64))
            .collect(),
    ))
}

/// The GPU search (FAISS GPU index): exact over fp16 vectors up to [`KnnConfig::gpu_exact_max`]
/// faces, an IVF index above, trained (k-means), filled and searched on the GPU, so neither
/// step takes the worker's CPUs.
///
/// Exact fp16 is spelled `IVF1,SQfp16`: one inverted list probed by every query is a brute
/// force scan, and FAISS clones an IVF scalar-quantizer index to the GPU with its vectors in
/// fp16 (half the memory of `Flat`, and the GPU's fp16 dot products), which the `faiss` crate
/// cannot ask of a `Flat` index (it exposes no `GpuClonerOptions`).
#[cfg(feature = "gpu")]
fn gpu_search(
    data: &[f32],
    d: u32,
    n: usize,
    k: usize,
    cfg: &KnnConfig,
) -> Result<faiss::index::SearchResult, GroupError> {
    use faiss::index::UpcastIndex;
    use faiss::{index_factory, Index, MetricType, StandardGpuResources};

    let err = |e: faiss::error::Error| GroupError::Faiss(e.to_string());
    let res = StandardGpuResources::new().map_err(err)?;
    let cpu = if n <= cfg.gpu_exact_max {
        index_factory(d, "IVF1,SQfp16", MetricType::InnerProduct).map_err(err)?
    } else {
        // FAISS's rule of thumb: about 4 sqrt(N) lists, each trained from >= 39 points.
        let nlist = ((4.0 * (n as f64).sqrt()) as usize).clamp(1, (n / 39).max(1));
        let index =
            index_factory(d, format!("IVF{nlist},Flat"), MetricType::InnerProduct).map_err(err)?;
        let mut ivf = index.into_ivf_flat().map_err(err)?;
        // Set before cloning: the GPU index copies nprobe from the CPU one.
        ivf.set_nprobe(cfg.ivf_nprobe.clamp(1, nlist) as u32);
        ivf.upcast()
    };
    // Cloned untrained: FAISS's k-means then runs on the GPU (seeded, deterministic sample).
    let mut gpu = cpu.into_gpu(&res, 0).map_err(err)?;
    gpu.train(data).map_err(err)?;
    gpu.add(data).map_err(err)?;
    gpu.search(data, k).map_err(err)
}

#[cfg(all(feature = "faiss", not(feature = "gpu")))]
fn gpu_search(
    _data: &[f32],
    _d: u32,
    _n: usize,
    _k: usize,
    _cfg: &KnnConfig,
) -> Result<faiss::index::SearchResult, GroupError> {
    Err(GroupError::Faiss(
        "built without the `gpu` feature".to_owned(),
    ))
}

/// The CPU search above `exact_max` (steps 1 and 2 of the module doc), built from exact dense
/// matrix products ([`super::dense`]). Rows exclude the face itself and are sorted, most similar
/// first.
fn partitioned_graph(data: &[f32], dim: usize, n: usize, k: usize, cfg: &KnnConfig) -> KnnGraph {
    let nlist = (n / cfg.list_size.max(1)).clamp(1, n);
    let spill = cfg.partition_spill.clamp(1, nlist);
    let per_list = cfg.train_per_list.max(1);
    let started = std::time::Instant::now();
    let ns = (per_list * nlist).min(n);
    let step = n / ns;
    let sample: Vec<f32> = (0..ns)
        .flat_map(|i| data[i * step * dim..(i * step + 1) * dim].iter().copied())
        .collect();
    let centroids = spherical_kmeans(&sample, dim, nlist, TRAIN_ITERS);
    drop(sample);
    let train_s = started.elapsed().as_secs_f64();

    let started = std::time::Instant::now();
    let mut lists = vec![0u32; n * spill];
    let quantised = super::int8::Centroids::new(&centroids, dim);
    super::int8::nearest(data, dim, &quantised, spill, &mut lists);
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); nlist];
    let mut stored: Vec<Vec<u32>> = vec![Vec::new(); nlist];
    for (i, row) in lists.chunks_exact(spill).enumerate() {
        for (j, &l) in row
            .iter()
            .enumerate()
            .filter(|&(_, &l)| (l as usize) < nlist)
        {
            if j == 0 {
                members[l as usize].push(i as u32);
            }
            stored[l as usize].push(i as u32);
        }
    }
    drop(lists);
    let pairs: usize = members
        .iter()
        .zip(&stored)
        .map(|(m, s)| m.len() * s.len())
        .sum();
    let largest = members.iter().map(Vec::len).max().unwrap_or(0);
    let assign_s = started.elapsed().as_secs_f64();

    let started = std::time::Instant::now();
    let mut graph = KnnGraph {
        k,
        neighbours: vec![u32::MAX; n * k],
        similarities: vec![f32::NEG_INFINITY; n * k],
    };
    let gather = |ids: &[u32]| -> Vec<f32> {
        let mut out = Vec::with_capacity(ids.len() * dim);
        for &i in ids {
            out.extend_from_slice(&data[i as usize * dim..(i as usize + 1) * dim]);
        }
        out
    };
    // Lists are searched [`LISTS_PER_ROUND`] at a time, in parallel: one list is too small a
    // product to keep both cores busy with its gathering and scattering around it. Each face is
    // the query of one list only, so the rows written are disjoint.
    let lists: Vec<usize> = (0..nlist).filter(|&l| !members[l].is_empty()).collect();
    for round in lists.chunks(LISTS_PER_ROUND) {
        let found: Vec<(Vec<u32>, Vec<f32>)> = round
            .par_iter()
            .map(|&l| {
                let (queries, base) = (&members[l], &stored[l]);
                let mut nb = vec![0u32; queries.len() * k];
                let mut sm = vec![0f32; queries.len() * k];
                super::dense::top_k(
                    &gather(queries),
                    &gather(base),
                    dim,
                    k,
                    |q, b| queries[q] == base[b],
                    &mut nb,
                    &mut sm,
                    false,
                );
                for e in &mut nb {
                    *e = base.get(*e as usize).copied().unwrap_or(u32::MAX);
                }
                (nb, sm)
            })
            .collect();
        for (&l, (nb, sm)) in round.iter().zip(found) {
            for (qi, &q) in members[l].iter().enumerate() {
                let row = q as usize * k..(q as usize + 1) * k;
                graph.neighbours[row.clone()].copy_from_slice(&nb[qi * k..(qi + 1) * k]);
                graph.similarities[row].copy_from_slice(&sm[qi * k..(qi + 1) * k]);
            }
        }
    }
    let search_s = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    symmetrise(&mut graph);
    tracing::debug!(
        nlist,
        spill,
        pairs,
        largest,
        train_s,
        assign_s,
        search_s,
        symmetrise_s = started.elapsed().as_secs_f64(),
        "partitioned kNN search"
    );
    graph
}

/// Spherical k-means: `nlist` unit centroids of the unit rows of `sample`, started from rows
/// taken at an even stride, `iters` rounds of assignment (one dense product) and re-centring.
/// A centroid that attracts nothing keeps its place. Deterministic.
fn spherical_kmeans(sample: &[f32], dim: usize, nlist: usize, iters: u32) -> Vec<f32> {
    let ns = sample.len() / dim;
    let stride = (ns / nlist.max(1)).max(1);
    let mut centroids: Vec<f32> = (0..nlist)
        .flat_map(|c| {
            let i = (c * stride).min(ns - 1);
            sample[i * dim..(i + 1) * dim].iter().copied()
        })
        .collect();
    let mut best = vec![0u32; ns];
    let mut unused = vec![0f32; ns];
    for _ in 0..iters {
        super::dense::top_k(
            sample,
            &centroids,
            dim,
            1,
            |_, _| false,
            &mut best,
            &mut unused,
            true,
        );
        let mut sums = vec![0f32; nlist * dim];
        for (row, &c) in sample.chunks_exact(dim).zip(&best) {
            if let Some(sum) = sums.get_mut(c as usize * dim..(c as usize + 1) * dim) {
                sum.iter_mut().zip(row).for_each(|(s, x)| *s += x);
            }
        }
        for (c, sum) in centroids.chunks_exact_mut(dim).zip(sums.chunks_exact(dim)) {
            let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                c.iter_mut().zip(sum).for_each(|(c, s)| *c = s / norm);
            }
        }
    }
    centroids
}

/// Neighbour-of-neighbour refinement (step 3 of the module doc): each round scores, for every
/// face, the neighbours of its first `refine_fanout` neighbours that it does not hold yet, with
/// exact dot products, and keeps the best `k`. Rounds stop early when nothing changed; the
/// result is symmetrised again.
///
/// Rows are refined in place, [`REFINE_BLOCK`] at a time: a block's rows are computed in
/// parallel from the graph as it stands (earlier blocks already refined), then written back.
/// So the result does not depend on thread timing, and the graph is not copied (a second graph
/// was 256 MiB at 1M faces; blocks hold 16 MiB).
fn refine(graph: &mut KnnGraph, data: &[f32], dim: usize, cfg: &KnnConfig) {
    let (n, k) = (graph.len(), graph.k);
    let fanout = cfg.refine_fanout.min(k);
    let min_sim = cfg.refine_min_similarity;
    if n == 0 || fanout == 0 || cfg.refine_rounds == 0 {
        return;
    }
    let mut neighbours = vec![0u32; REFINE_BLOCK.min(n) * k];
    let mut similarities = vec![0f32; REFINE_BLOCK.min(n) * k];
    for round in 0..cfg.refine_rounds {
        let started = std::time::Instant::now();
        let (mut scored, mut improved) = (0usize, 0usize);
        for r0 in (0..n).step_by(REFINE_BLOCK) {
            let rows = REFINE_BLOCK.min(n - r0);
            let old = &*graph;
            neighbours[..rows * k].copy_from_slice(&old.neighbours[r0 * k..(r0 + rows) * k]);
            similarities[..rows * k].copy_from_slice(&old.similarities[r0 * k..(r0 + rows) * k]);
            let (s, i) = neighbours[..rows * k]
                .par_chunks_mut(k)
                .zip(similarities[..rows * k].par_chunks_mut(k))
                .enumerate()
                .map(|(r, (nb, sm))| refine_row(old, data, dim, fanout, min_sim, r0 + r, nb, sm))
                .reduce(|| (0, 0), |x, y| (x.0 + y.0, x.1 + y.1));
            scored += s;
            improved += i;
            graph.neighbours[r0 * k..(r0 + rows) * k].copy_from_slice(&neighbours[..rows * k]);
            graph.similarities[r0 * k..(r0 + rows) * k].copy_from_slice(&similarities[..rows * k]);
        }
        tracing::debug!(
            round,
            scored,
            improved,
            refine_s = started.elapsed().as_secs_f64(),
            "kNN refinement"
        );
        if improved == 0 {
            break;
        }
    }
    symmetrise(graph);
}

/// Rows refined per block (see [`refine`]).
const REFINE_BLOCK: usize = 1 << 16;

/// One row of [`refine`]: face `a`'s row `(nb, sm)` (a copy of its row in `graph`) takes the
/// best of its neighbours' neighbours. Returns (candidates scored, entries that improved).
#[allow(clippy::too_many_arguments)]
fn refine_row(
    graph: &KnnGraph,
    data: &[f32],
    dim: usize,
    fanout: usize,
    min_sim: f32,
    a: usize,
    nb: &mut [u32],
    sm: &mut [f32],
) -> (usize, usize) {
    // The neighbours' rows are scattered over the graph (256 MiB at 1M faces): ask for all of
    // them before reading the first.
    let k = graph.k;
    for (c, _) in graph.row(a).take(fanout) {
        super::prefetch(&graph.neighbours[c * k..c * k + fanout]);
        super::prefetch(&graph.similarities[c * k..c * k + fanout]);
    }
    let mut candidates: Vec<u32> = Vec::new();
    for (c, _) in graph.row(a).take(fanout).take_while(|&(_, s)| s >= min_sim) {
        candidates.extend(
            graph
                .row(c)
                .take(fanout)
                .take_while(|&(_, s)| s >= min_sim)
                .map(|(e, _)| e as u32)
                .filter(|&e| e as usize != a),
        );
    }
    candidates.sort_unstable();
    candidates.dedup();
    candidates.retain(|e| !nb.contains(e));
    let qa = &data[a * dim..(a + 1) * dim];
    let mut improved = 0usize;
    let row = |e: u32| &data[e as usize * dim..(e as usize + 1) * dim];
    for (at, &e) in candidates.iter().enumerate() {
        if let Some(&next) = candidates.get(at + 1) {
            super::prefetch(row(next));
        }
        let s = super::dot(qa, row(e));
        improved += usize::from(insert_sorted(nb, sm, e, s));
    }
    (candidates.len(), improved)
}

/// Puts `(e, s)` into the sorted row `(nb, sm)` if it beats the worst entry; true if it did.
pub(crate) fn insert_sorted(nb: &mut [u32], sm: &mut [f32], e: u32, s: f32) -> bool {
    let Some(last) = sm.len().checked_sub(1) else {
        return false;
    };
    if s <= sm[last] || s.is_nan() {
        return false;
    }
    let mut j = last;
    while j > 0 && sm[j - 1] < s {
        sm[j] = sm[j - 1];
        nb[j] = nb[j - 1];
        j -= 1;
    }
    sm[j] = s;
    nb[j] = e;
    true
}

/// Similarity is symmetric: where face `a` found `b` but `b` missed `a` (the two fell in
/// different lists), gives `b` the edge too if it beats `b`'s worst neighbour. Rows stay sorted,
/// most similar first. An edge is then lost only when both directions missed it.
///
/// Memory: only reverse edges that beat the row's current worst are kept (counted, then filled,
/// by target), at most `N k` x 8 bytes and far fewer in practice.
fn symmetrise(graph: &mut KnnGraph) {
    let (n, k) = (graph.len(), graph.k);
    if n == 0 || k == 0 {
        return;
    }
    let worst: Vec<f32> = graph
        .similarities
        .chunks_exact(k)
        .map(|r| r[k - 1])
        .collect();
    let reverse = |a: usize| {
        let g = &*graph;
        let worst = &worst;
        g.row(a)
            .filter(move |&(b, s)| b != a && s > worst[b])
            .map(move |(b, s)| (b, a as u32, s))
    };
    let mut starts = vec![0usize; n + 1];
    for a in 0..n {
        for (b, _, _) in reverse(a) {
            starts[b + 1] += 1;
        }
    }
    for i in 0..n {
        starts[i + 1] += starts[i];
    }
    let mut fill = starts.clone();
    let mut rev: Vec<(u32, f32)> = vec![(0, 0.0); starts[n]];
    for a in 0..n {
        for (b, a, s) in reverse(a) {
            rev[fill[b]] = (a, s);
            fill[b] += 1;
        }
    }
    drop(fill);
    graph
        .neighbours
        .par_chunks_mut(k)
        .zip(graph.similarities.par_chunks_mut(k))
        .enumerate()
        .for_each(|(b, (nb, sm))| {
            for &(a, s) in &rev[starts[b]..starts[b + 1]] {
                if !nb.contains(&a) {
                    insert_sorted(nb, sm, a, s);
                }
            }
        });
}

/// Without FAISS there is no GPU search; [`KnnGraph::build`] never asks for one.
#[cfg(not(feature = "faiss"))]
fn search(
    _data: &[f32],
    _dim: usize,
    _n: usize,
    _k: usize,
    _cfg: &KnnConfig,
) -> Result<(Vec<f32>, Vec<i64>), GroupError> {
    Err(GroupError::Faiss(
        "built without the `faiss` feature".to_owned(),
    ))
}
