//! The k-nearest-neighbour graph over unit embeddings that grouping works on.
//!
//! Inner product of L2-normalised vectors is cosine similarity, so the graph is built with
//! inner-product search: FAISS `IndexFlatIP` (exact) up to [`KnnConfig::exact_max`] faces; above
//! it an approximate partitioned search (k-means lists, each face stored in its
//! [`KnnConfig::partition_spill`] nearest lists, every list searched exactly as one dense matrix
//! product, see [`partitioned_search`]), or FAISS's IVF index on the GPU with the `gpu` feature.
//! Without the `faiss` feature an exact blocked search in Rust stands in, so the crate still
//! builds where the FAISS C API is not installed.

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
    /// Inverted lists the GPU IVF index (`gpu` feature) probes per query (of about 4 sqrt(N)).
    /// The CPU search above `exact_max` uses [`Self::partition_spill`] instead. Default 32: a fixed
    /// count keeps a query at O(sqrt(N)) vectors, so the graph costs O(N^1.5 d) rather than
    /// O(N^2 d); one person's faces are tight and fall in few, neighbouring lists, and probing
    /// too few (e.g. 1) was measured to split a person whose faces straddle two lists.
    pub ivf_nprobe: usize,
    /// Above `exact_max` on the CPU: how many of the about 2 sqrt(N) k-means lists each face is
    /// stored in (its nearest centroids); a face is searched, exactly, against the faces stored in
    /// its own nearest list. Default 8, measured on 100k synthetic faces (bench `grouping`):
    /// recall of same-person edges (cos >= 0.3) 0.984 after symmetrising the graph (32: 0.993,
    /// with 2.5x the search time). Search time grows linearly with it.
    pub partition_spill: usize,
    /// Search on the GPU (only with the `gpu` feature; ignored otherwise).
    pub gpu: bool,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self {
            k: 32,
            exact_max: 50_000,
            ivf_nprobe: 32,
            partition_spill: 8,
            gpu: cfg!(feature = "gpu"),
        }
    }
}

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
        // One extra hit: the face itself is normally its own best match and is dropped.
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
        Ok(Self {
            k,
            neighbours,
            similarities,
        })
    }
}

/// Raw `(similarities, labels)` of the `k` best matches of every vector, row-major.
#[cfg(feature = "faiss")]
fn search(
    data: &[f32],
    dim: usize,
    n: usize,
    k: usize,
    cfg: &KnnConfig,
) -> Result<(Vec<f32>, Vec<i64>), GroupError> {
    use faiss::index::UpcastIndex;
    use faiss::{index_factory, Index, MetricType};

    let faiss_err = |e: faiss::error::Error| GroupError::Faiss(e.to_string());
    let d = u32::try_from(dim).map_err(|_| GroupError::Faiss(format!("dimension {dim}")))?;
    let result = if n <= cfg.exact_max {
        let mut index = index_factory(d, "Flat", MetricType::InnerProduct).map_err(faiss_err)?;
        index.add(data).map_err(faiss_err)?;
        run_search(index, data, k, cfg)?
    } else if cfg!(feature = "gpu") && cfg.gpu {
        // FAISS's rule of thumb: about 4 sqrt(N) lists, each trained from >= 39 points.
        let nlist = ((4.0 * (n as f64).sqrt()) as usize).clamp(1, (n / 39).max(1));
        let index = index_factory(d, format!("IVF{nlist},Flat"), MetricType::InnerProduct)
            .map_err(faiss_err)?;
        let mut ivf = index.into_ivf_flat().map_err(faiss_err)?;
        ivf.set_nprobe(cfg.ivf_nprobe.clamp(1, nlist) as u32);
        // FAISS trains k-means with a fixed seed on a seeded subsample (at most 256 points per
        // list), so the index, and hence the graph, is the same on every run.
        ivf.train(data).map_err(faiss_err)?;
        ivf.add(data).map_err(faiss_err)?;
        run_search(ivf.upcast(), data, k, cfg)?
    } else {
        return partitioned_search(data, dim, n, k, cfg);
    };
    Ok((
        result.distances,
        result
            .labels
            .iter()
            .map(|l| l.get().map_or(-1, |v| v as i64))
            .collect(),
    ))
}

/// Approximate search for large `n`, built from exact dense matrix products (BLAS), which on a
/// CPU run several times faster per inner product than FAISS's IVF list scans:
///
/// 1. spherical k-means, `nlist` = 2 sqrt(n) centroids, trained on a strided sample of
///    [`TRAIN_PER_LIST`] faces per centroid for [`TRAIN_ITERS`] iterations (FAISS's `IVF`
///    trains on up to 256 per list for 25, which at 1M faces alone is hours on 2 cores);
/// 2. every face is stored in its `spill` nearest lists and belongs to its nearest one;
/// 3. per list, an exact `IndexFlatIP` search of the faces that belong to it against the faces
///    stored in it (about n/nlist x spill n/nlist);
/// 4. the graph is symmetrised ([`symmetrise`]).
///
/// Cost O(n sqrt(n) d (1 + spill)): training and assignment are O(n sqrt(n) d) matrix products,
/// the search O(n spill sqrt(n) d / 2). Memory O(n (d + k + spill)). Deterministic: seeded
/// k-means on a fixed sample, lists searched in order.
#[cfg(feature = "faiss")]
fn partitioned_search(
    data: &[f32],
    dim: usize,
    n: usize,
    k: usize,
    cfg: &KnnConfig,
) -> Result<(Vec<f32>, Vec<i64>), GroupError> {
    use faiss::cluster::{Clustering, ClusteringParameters};
    use faiss::{FlatIndex, Index};

    let faiss_err = |e: faiss::error::Error| GroupError::Faiss(e.to_string());
    let d = dim as u32;
    let nlist = ((2.0 * (n as f64).sqrt()) as usize).clamp(1, (n / 64).max(1));
    let spill = cfg.partition_spill.clamp(1, nlist);
    let started = std::time::Instant::now();
    let ns = (TRAIN_PER_LIST * nlist).min(n);
    let step = n / ns;
    let sample: Vec<f32> = (0..ns)
        .flat_map(|i| data[i * step * dim..(i * step + 1) * dim].iter().copied())
        .collect();
    let mut params = ClusteringParameters::new();
    params.set_spherical(true);
    params.set_niter(TRAIN_ITERS);
    // FAISS warns below 39 points per centroid; fewer suffice for partitioning.
    params.set_min_points_per_centroid(TRAIN_PER_LIST as u32);
    let mut clus = Clustering::new_with_params(d, nlist as u32, &params).map_err(faiss_err)?;
    let mut qidx = FlatIndex::new_ip(d).map_err(faiss_err)?;
    clus.train(&sample, &mut qidx).map_err(faiss_err)?;
    drop(sample);
    let centroids: Vec<f32> = clus.centroids().map_err(faiss_err)?.concat();
    let train_s = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let mut quantizer = FlatIndex::new_ip(d).map_err(faiss_err)?;
    quantizer.add(&centroids).map_err(faiss_err)?;
    let assign = quantizer.search(data, spill).map_err(faiss_err)?;
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); nlist];
    let mut db: Vec<Vec<u32>> = vec![Vec::new(); nlist];
    for (i, row) in assign.labels.chunks_exact(spill).enumerate() {
        for (j, l) in row.iter().enumerate() {
            if let Some(l) = l.get() {
                if j == 0 {
                    members[l as usize].push(i as u32);
                }
                db[l as usize].push(i as u32);
            }
        }
    }
    drop(assign);
    let assign_s = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let mut sims = vec![f32::NEG_INFINITY; n * k];
    let mut labels = vec![-1i64; n * k];
    let gather = |ids: &[u32]| -> Vec<f32> {
        let mut out = Vec::with_capacity(ids.len() * dim);
        for &i in ids {
            out.extend_from_slice(&data[i as usize * dim..(i as usize + 1) * dim]);
        }
        out
    };
    for (queries, base) in members.iter().zip(&db) {
        if queries.is_empty() {
            continue;
        }
        let kk = k.min(base.len());
        let mut index = FlatIndex::new_ip(d).map_err(faiss_err)?;
        index.add(&gather(base)).map_err(faiss_err)?;
        let r = index.search(&gather(queries), kk).map_err(faiss_err)?;
        for (qi, &q) in queries.iter().enumerate() {
            let q = q as usize;
            for j in 0..kk {
                if let Some(l) = r.labels[qi * kk + j].get() {
                    labels[q * k + j] = base[l as usize] as i64;
                    sims[q * k + j] = r.distances[qi * kk + j];
                }
            }
        }
    }
    let search_s = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    symmetrise(&mut sims, &mut labels, k);
    tracing::debug!(
        nlist,
        spill,
        train_s,
        assign_s,
        search_s,
        symmetrise_s = started.elapsed().as_secs_f64(),
        "partitioned kNN search"
    );
    Ok((sims, labels))
}

/// Similarity is symmetric: where face `a` found `b` but `b` missed `a` (the two fell in
/// different lists), gives `b` the edge too if it beats `b`'s worst neighbour. Rows stay sorted,
/// most similar first. An edge is then lost only when both directions missed it.
#[cfg(feature = "faiss")]
fn symmetrise(sims: &mut [f32], labels: &mut [i64], k: usize) {
    let n = sims.len() / k;
    // Reverse edges (b <- a, s) grouped by b.
    let mut rev: Vec<(u32, u32, f32)> = Vec::with_capacity(n * k);
    for a in 0..n {
        for j in 0..k {
            let b = labels[a * k + j];
            if b >= 0 && b as usize != a {
                rev.push((b as u32, a as u32, sims[a * k + j]));
            }
        }
    }
    rev.par_sort_unstable_by_key(|e| e.0);
    let mut starts = vec![0usize; n + 1];
    for e in &rev {
        starts[e.0 as usize + 1] += 1;
    }
    for i in 0..n {
        starts[i + 1] += starts[i];
    }
    sims.par_chunks_mut(k)
        .zip(labels.par_chunks_mut(k))
        .enumerate()
        .for_each(|(b, (sm, lb))| {
            let mut row: Vec<(f32, i64)> = sm.iter().copied().zip(lb.iter().copied()).collect();
            for &(_, a, s) in &rev[starts[b]..starts[b + 1]] {
                if s > row[k - 1].0 && !row.iter().any(|r| r.1 == a as i64) {
                    row[k - 1] = (s, a as i64);
                    row.sort_by(|x, y| y.0.total_cmp(&x.0));
                }
            }
            for (j, (s, l)) in row.into_iter().enumerate() {
                sm[j] = s;
                lb[j] = l;
            }
        });
}

/// Faces per centroid the partitioned search's k-means trains on (see [`partitioned_search`]).
const TRAIN_PER_LIST: usize = 32;
/// k-means iterations of the partitioned search.
const TRAIN_ITERS: u32 = 10;

#[cfg(all(feature = "faiss", not(feature = "gpu")))]
fn run_search(
    mut index: faiss::index::IndexImpl,
    data: &[f32],
    k: usize,
    _cfg: &KnnConfig,
) -> Result<faiss::index::SearchResult, GroupError> {
    use faiss::Index;
    index
        .search(data, k)
        .map_err(|e| GroupError::Faiss(e.to_string()))
}

#[cfg(feature = "gpu")]
fn run_search(
    mut index: faiss::index::IndexImpl,
    data: &[f32],
    k: usize,
    cfg: &KnnConfig,
) -> Result<faiss::index::SearchResult, GroupError> {
    use faiss::{Index, StandardGpuResources};

    let err = |e: faiss::error::Error| GroupError::Faiss(e.to_string());
    if !cfg.gpu {
        return index.search(data, k).map_err(err);
    }
    let res = StandardGpuResources::new().map_err(err)?;
    let mut gpu = index.into_gpu(&res, 0).map_err(err)?;
    gpu.search(data, k).map_err(err)
}

/// Exact blocked inner-product search, for builds without FAISS.
#[cfg(not(feature = "faiss"))]
fn search(
    data: &[f32],
    dim: usize,
    n: usize,
    k: usize,
    _cfg: &KnnConfig,
) -> Result<(Vec<f32>, Vec<i64>), GroupError> {
    let rows: Vec<(Vec<f32>, Vec<i64>)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let q = &data[i * dim..(i + 1) * dim];
            let mut best: Vec<(f32, usize)> = data
                .chunks_exact(dim)
                .enumerate()
                .map(|(j, v)| (super::dot(q, v), j))
                .collect();
            let k = k.min(n);
            best.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            best.truncate(k);
            best.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut sims: Vec<f32> = best.iter().map(|b| b.0).collect();
            let mut labels: Vec<i64> = best.iter().map(|b| b.1 as i64).collect();
            sims.resize(k, f32::NEG_INFINITY);
            labels.resize(k, -1);
            (sims, labels)
        })
        .collect();
    let (sims, labels): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
    Ok((sims.concat(), labels.concat()))
}
