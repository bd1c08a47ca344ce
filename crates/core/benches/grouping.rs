//! Grouping speed on synthetic faces: kNN graph (FAISS), then average-linkage clustering
//! side by side with connected components on the same graph.
//!
//! `cargo bench -p facegroup-core --bench grouping [-- SIZES]`, SIZES comma-separated
//! (default 10000,100000). Faces: 70% in persons of 2-40 faces (cos ~0.5-0.7 to each
//! other, like one person's photos), 30% strangers (random unit vectors). Reports wall time
//! and the process's peak memory after each size, and on stderr the graph's recall@k against
//! exact search for 500 faces spread over the set (over all faces, over faces of a person, and
//! over true neighbours with cos >= 0.3, i.e. same-person edges). Knobs (environment):
//! FACEGROUP_BENCH_EXACT_MAX, FACEGROUP_BENCH_SPILL, FACEGROUP_BENCH_NPROBE (GPU IVF).

use std::time::Instant;

use rayon::prelude::*;

use facegroup_core::group::hac::{average_linkage, HacInput};
use facegroup_core::group::{baselines, GroupConfig, KnnGraph, MergeThreshold};

const DIM: usize = 512;
/// Similarity above which a true neighbour counts as a same-person edge in the recall report
/// (two faces of one synthetic person have cos ~0.5, two strangers |cos| < 0.25).
const STRONG: f32 = 0.3;

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    fn gaussian(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }

    fn unit_into(&mut self, out: &mut Vec<f32>, centre: Option<&[f32]>, noise: f32) {
        let start = out.len();
        for k in 0..DIM {
            let c = centre.map_or(0.0, |c| c[k]);
            out.push(c + noise * self.gaussian() / (DIM as f32).sqrt());
        }
        let v = &mut out[start..];
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Row-major unit embeddings and one photo id per face.
fn synthetic(n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng(seed);
    let mut data = Vec::with_capacity(n * DIM);
    let clustered = n * 7 / 10;
    let mut centre = Vec::with_capacity(DIM);
    let mut made = 0;
    while made < clustered {
        let size = (2 + rng.next_u64() % 39) as usize;
        centre.clear();
        rng.unit_into(&mut centre, None, 1.0);
        for _ in 0..size.min(clustered - made) {
            rng.unit_into(&mut data, Some(&centre), 1.0);
            made += 1;
        }
    }
    while data.len() < n * DIM {
        rng.unit_into(&mut data, None, 1.0);
    }
    (data, (0..n as u32).collect())
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "10000,100000".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut cfg = GroupConfig::default();
    // Index knobs for experiments; the defaults are what production uses.
    if let Some(v) = env_usize("FACEGROUP_BENCH_NPROBE") {
        cfg.knn.ivf_nprobe = v;
    }
    if let Some(v) = env_usize("FACEGROUP_BENCH_SPILL") {
        cfg.knn.partition_spill = v;
    }
    if let Some(v) = env_usize("FACEGROUP_BENCH_EXACT_MAX") {
        cfg.knn.exact_max = v;
    }
    println!(
        "| faces | kNN graph (k={}) | index | avg-linkage HAC | persons | conn. components | persons | peak RSS |",
        cfg.knn.k
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let (data, images) = synthetic(n, n as u64);
        let t = Instant::now();
        let graph = match KnnGraph::build(&data, DIM, &cfg.knn) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("{n}: {e}");
                continue;
            }
        };
        let knn_s = t.elapsed().as_secs_f64();
        let (recall, recall_persons, recall_strong) = recall_at_k(&data, &graph, 500);
        eprintln!(
            "{n}: recall@{} all {recall:.4}, clustered faces {recall_persons:.4}, edges cos >= {STRONG} {recall_strong:.4}",
            graph.k
        );
        let seeds = vec![true; n];
        let t = Instant::now();
        let roots = average_linkage(&HacInput {
            data: &data,
            dim: DIM,
            images: &images,
            seeds: &seeds,
            graph: &graph,
            threshold: MergeThreshold {
                pair: cfg.pair_threshold,
                floor: cfg.merge_threshold,
            },
            cohesion: cfg.cohesion(),
        });
        let hac_s = t.elapsed().as_secs_f64();
        let hac_persons = count_groups(roots.iter().map(|&r| Some(r)));
        let t = Instant::now();
        let cc = baselines::connected_components(&baselines::graph_neighbours(&graph, 0.5), 2);
        let cc_s = t.elapsed().as_secs_f64();
        let cc_persons = count_groups(cc.iter().map(|c| c.map(|c| c as usize)));
        let index = if n <= cfg.knn.exact_max {
            "Flat (exact)"
        } else {
            "partitioned (k-means lists + BLAS)"
        };
        println!(
            "| {n} | {knn_s:.2} s | {index} | {hac_s:.2} s | {hac_persons} | {cc_s:.2} s | {cc_persons} | {:.0} MiB |",
            peak_rss_mib()
        );
    }
}

/// Mean recall@k of the graph against exact search over all `n` faces, for `queries` faces
/// spread evenly over the set: over all of them, and over the faces that belong to a person
/// (the first 70%; the rest are random strangers whose neighbours are noise).
fn recall_at_k(data: &[f32], graph: &KnnGraph, queries: usize) -> (f64, f64, f64) {
    let n = graph.len();
    let k = graph.k;
    if n == 0 || k == 0 {
        return (1.0, 1.0, 1.0);
    }
    let step = (n / queries.min(n)).max(1);
    let rows: Vec<(usize, f64, usize, usize)> = (0..n)
        .step_by(step)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|q| {
            let qv = &data[q * DIM..(q + 1) * DIM];
            let mut sims: Vec<(f32, usize)> = data
                .chunks_exact(DIM)
                .enumerate()
                .filter(|&(j, _)| j != q)
                .map(|(j, v)| (dot(qv, v), j))
                .collect();
            sims.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            let truth: std::collections::HashSet<usize> = sims[..k].iter().map(|s| s.1).collect();
            let strong: Vec<usize> = sims[..k]
                .iter()
                .filter(|s| s.0 >= STRONG)
                .map(|s| s.1)
                .collect();
            let found: std::collections::HashSet<usize> = graph.row(q).map(|(j, _)| j).collect();
            let hit = truth.iter().filter(|j| found.contains(j)).count();
            let strong_hit = strong.iter().filter(|j| found.contains(j)).count();
            (q, hit as f64 / k as f64, strong_hit, strong.len())
        })
        .collect();
    let mean = |it: &mut dyn Iterator<Item = f64>| {
        let (s, c) = it.fold((0.0, 0usize), |(s, c), r| (s + r, c + 1));
        s / c.max(1) as f64
    };
    let clustered = n * 7 / 10;
    let (hit, all) = rows.iter().fold((0, 0), |(h, a), r| (h + r.2, a + r.3));
    (
        mean(&mut rows.iter().map(|r| r.1)),
        mean(&mut rows.iter().filter(|r| r.0 < clustered).map(|r| r.1)),
        hit as f64 / all.max(1) as f64,
    )
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum()
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.parse().ok()
}

/// Groups with at least two members.
fn count_groups(labels: impl Iterator<Item = Option<usize>>) -> usize {
    let mut count = std::collections::HashMap::new();
    for l in labels.flatten() {
        *count.entry(l).or_insert(0usize) += 1;
    }
    count.values().filter(|&&c| c >= 2).count()
}
