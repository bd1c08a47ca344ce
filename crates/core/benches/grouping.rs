//! Grouping speed on synthetic faces: kNN graph (FAISS), then average-linkage clustering
//! side by side with connected components on the same graph.
//!
//! `cargo bench -p facegroup-core --bench grouping [-- SIZES]`, SIZES comma-separated
//! (default 10000,100000). Faces: 70% in persons of 2-40 faces (cos ~0.5-0.7 to each
//! other, like one person's photos), 30% strangers (random unit vectors). Reports wall time
//! and the process's peak memory after each size.

use std::time::Instant;

use facegroup_core::group::hac::{average_linkage, HacInput};
use facegroup_core::group::{baselines, GroupConfig, KnnGraph, MergeThreshold};

const DIM: usize = 512;

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
            "IVF"
        };
        println!(
            "| {n} | {knn_s:.2} s | {index} | {hac_s:.2} s | {hac_persons} | {cc_s:.2} s | {cc_persons} | {:.0} MiB |",
            peak_rss_mib()
        );
    }
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
