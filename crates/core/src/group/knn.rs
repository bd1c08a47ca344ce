//! The k-nearest-neighbour graph over unit embeddings that grouping works on.
//!
//! Inner product of L2-normalised vectors is cosine similarity, so the graph is built with
//! inner-product search: FAISS `IndexFlatIP` (exact) up to [`KnnConfig::exact_max`] faces, an
//! IVF index above it (approximate, sub-quadratic), and FAISS's GPU index with the `gpu` feature.
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
    /// Inverted lists the IVF index probes per query (of about 4 sqrt(N)). Default 32: a fixed
    /// count keeps a query at O(sqrt(N)) vectors, so the graph costs O(N^1.5 d) rather than
    /// O(N^2 d); one person's faces are tight and fall in few, neighbouring lists, and probing
    /// too few (e.g. 1) was measured to split a person whose faces straddle two lists.
    pub ivf_nprobe: usize,
    /// Search on the GPU (only with the `gpu` feature; ignored otherwise).
    pub gpu: bool,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self {
            k: 32,
            exact_max: 50_000,
            ivf_nprobe: 32,
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
    } else {
        // FAISS's rule of thumb: about 4 sqrt(N) lists, each trained from >= 39 points.
        let nlist = ((4.0 * (n as f64).sqrt()) as usize).clamp(1, (n / 39).max(1));
        let index = index_factory(d, format!("IVF{nlist},Flat"), MetricType::InnerProduct)
            .map_err(faiss_err)?;
        let mut ivf = index.into_ivf_flat().map_err(faiss_err)?;
        ivf.set_nprobe(cfg.ivf_nprobe.clamp(1, nlist) as u32);
        // FAISS trains k-means with a fixed seed on a seeded subsample (at most 256 points per
        // list), so the index, and hence the graph, is the same on every run.
        let started = std::time::Instant::now();
        ivf.train(data).map_err(faiss_err)?;
        ivf.add(data).map_err(faiss_err)?;
        tracing::debug!(
            nlist,
            secs = started.elapsed().as_secs_f64(),
            "IVF index trained"
        );
        run_search(ivf.upcast(), data, k, cfg)?
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
