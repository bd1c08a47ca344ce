//! Grouping at scale on synthetic faces: kNN graph (see `group/knn.rs`), then average-linkage
//! clustering, with the graph's recall against exact search.
//!
//! `cargo bench -p facegroup-core --bench grouping [-- SIZES]`, SIZES comma-separated (default
//! 10000,100000). Prints one machine-readable line per size and face distribution on stdout:
//!
//! `grouping n=N dist=D graph_s=.. cluster_s=.. recall_all=.. recall_same=.. persons=.. peak_mib=..`
//!
//! - `recall_all`: mean recall@k of the graph against exact search, for 500 faces spread over
//!   the set; `recall_same`: the share of their true top-k neighbours with cos >= 0.3 (i.e.
//!   same-person edges, which are what clustering needs) that the graph holds.
//! - `peak_mib`: the process's peak resident memory from the generated faces to the end of
//!   clustering (reset before each size; includes the embeddings, `N d` floats);
//!   `graph_peak_mib`: the same, to the end of the graph build.
//!
//! Distributions (`FACEGROUP_BENCH_DIST`: `uniform`, `realistic` or `both`, the default):
//!
//! - `uniform` (the original bench): 70% of the faces in persons of 2-40 faces, 30% strangers.
//! - `realistic`: person sizes from a power law, P(size = s) ~ s^-2 up to 5000 faces, which gives
//!   many singletons (about 60% of persons, 12% of faces), a body of small persons and a long
//!   tail of very large ones (a wedding's couple, an agency's regulars).
//!
//! In both, one person's faces have cos ~0.5 to each other (a random centre plus as much random
//! noise), like one person's photos; strangers are random unit vectors (|cos| < 0.25).
//! Knobs (environment): FACEGROUP_BENCH_EXACT_MAX, FACEGROUP_BENCH_LIST_SIZE,
//! FACEGROUP_BENCH_TRAIN_PER_LIST, FACEGROUP_BENCH_SPILL, FACEGROUP_BENCH_REFINE_ROUNDS,
//! FACEGROUP_BENCH_REFINE_FANOUT, FACEGROUP_BENCH_NPROBE (GPU IVF).

use std::time::Instant;

use rayon::prelude::*;

use facegroup_core::group::hac::{average_linkage, HacInput};
use facegroup_core::group::{GroupConfig, KnnGraph, MergeThreshold};
use facegroup_testkit::Rng;

const DIM: usize = 512;
/// Similarity above which a true neighbour counts as a same-person edge in the recall report
/// (two faces of one synthetic person have cos ~0.5, two strangers |cos| < 0.25).
const STRONG: f32 = 0.3;
/// Faces whose recall is measured.
const QUERIES: usize = 500;

fn main() {
    // RUST_LOG=facegroup_core=debug prints the kNN stages' timings on stderr.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "10000,100000".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let dists: Vec<Dist> = match std::env::var("FACEGROUP_BENCH_DIST").as_deref() {
        Ok("uniform") => vec![Dist::Uniform],
        Ok("realistic") => vec![Dist::Realistic],
        _ => vec![Dist::Uniform, Dist::Realistic],
    };
    let mut cfg = GroupConfig::default();
    // Index knobs for experiments; the defaults are what production uses.
    let knobs: [(&str, &mut usize); 7] = [
        ("FACEGROUP_BENCH_EXACT_MAX", &mut cfg.knn.exact_max),
        ("FACEGROUP_BENCH_LIST_SIZE", &mut cfg.knn.list_size),
        (
            "FACEGROUP_BENCH_TRAIN_PER_LIST",
            &mut cfg.knn.train_per_list,
        ),
        ("FACEGROUP_BENCH_SPILL", &mut cfg.knn.partition_spill),
        ("FACEGROUP_BENCH_REFINE_ROUNDS", &mut cfg.knn.refine_rounds),
        ("FACEGROUP_BENCH_REFINE_FANOUT", &mut cfg.knn.refine_fanout),
        ("FACEGROUP_BENCH_NPROBE", &mut cfg.knn.ivf_nprobe),
    ];
    for (name, knob) in knobs {
        if let Some(v) = std::env::var(name).ok().and_then(|v| v.parse().ok()) {
            *knob = v;
        }
    }
    eprintln!("kNN config: {:?}", cfg.knn);
    for n in sizes {
        for &dist in &dists {
            let faces = synthetic(n, n as u64, dist);
            reset_peak_rss();
            let t = Instant::now();
            let graph = match KnnGraph::build(&faces.data, DIM, &cfg.knn) {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("{n}: {e}");
                    continue;
                }
            };
            let graph_s = t.elapsed().as_secs_f64();
            let graph_peak_mib = peak_rss_mib();
            let seeds = vec![true; n];
            let tags: Vec<Vec<u32>> = faces.images.iter().map(|&p| vec![p]).collect();
            let t = Instant::now();
            let roots = average_linkage(&HacInput {
                data: &faces.data,
                dim: DIM,
                images: &faces.images,
                tags: &tags,
                seeds: &seeds,
                must_link: &[],
                graph: &graph,
                link: cfg.link_threshold,
                threshold: MergeThreshold {
                    pair: cfg.pair_threshold,
                    floor: cfg.merge_threshold,
                },
                cohesion: cfg.cohesion(),
            });
            let cluster_s = t.elapsed().as_secs_f64();
            let peak_mib = peak_rss_mib();
            let persons = count_groups(&roots);
            let (recall_all, recall_same) = recall_at_k(&faces.data, &graph, QUERIES);
            println!(
                "grouping n={n} dist={} graph_s={graph_s:.2} cluster_s={cluster_s:.2} \
                 recall_all={recall_all:.4} recall_same={recall_same:.4} persons={persons} \
                 true_persons={} graph_peak_mib={graph_peak_mib:.0} peak_mib={peak_mib:.0}",
                dist.name(),
                faces.persons
            );
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Dist {
    Uniform,
    Realistic,
}

impl Dist {
    fn name(self) -> &'static str {
        match self {
            Dist::Uniform => "uniform",
            Dist::Realistic => "realistic",
        }
    }

    /// The size of the next person (1: a stranger).
    fn person_size(self, rng: &mut Rng) -> usize {
        match self {
            Dist::Uniform => 2 + (rng.next_u64() % 39) as usize,
            Dist::Realistic => {
                // Inverse transform of the continuous power law p(s) ~ s^-2 on [1, MAX + 1),
                // floored: P(s) ~ 1/s - 1/(s+1), i.e. about s^-2.
                const MAX: f32 = 5000.0;
                let u = rng.uniform();
                let s = 1.0 / (1.0 - u * (1.0 - 1.0 / (MAX + 1.0)));
                (s as usize).clamp(1, MAX as usize)
            }
        }
    }
}

/// Row-major unit embeddings, one photo id per face (every face its own photo) and the number
/// of persons with at least two faces.
struct Faces {
    data: Vec<f32>,
    images: Vec<u32>,
    persons: usize,
}

fn synthetic(n: usize, seed: u64, dist: Dist) -> Faces {
    let mut rng = Rng::new(seed);
    let mut data = Vec::with_capacity(n * DIM);
    // The uniform set ends with 30% strangers; the realistic one draws its singletons.
    let clustered = match dist {
        Dist::Uniform => n * 7 / 10,
        Dist::Realistic => n,
    };
    let mut centre = Vec::with_capacity(DIM);
    let mut made = 0;
    let mut persons = 0;
    while made < clustered {
        let size = dist.person_size(&mut rng).min(clustered - made);
        persons += usize::from(size >= 2);
        centre.clear();
        unit_into(&mut rng, &mut centre, None, 1.0);
        for _ in 0..size {
            unit_into(&mut rng, &mut data, Some(&centre), 1.0);
        }
        made += size;
    }
    while data.len() < n * DIM {
        unit_into(&mut rng, &mut data, None, 1.0);
    }
    // Person faces were generated together; interleave them so that no index range is special.
    let order = shuffled(n, &mut rng);
    let mut mixed = facegroup_core::group::embedding_buffer(n * DIM);
    for &i in &order {
        mixed.extend_from_slice(&data[i * DIM..(i + 1) * DIM]);
    }
    Faces {
        data: mixed,
        images: (0..n as u32).collect(),
        persons,
    }
}

fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Mean recall@k of the graph against exact search for `queries` faces spread evenly over the
/// set, and the share of their true neighbours with cos >= [`STRONG`] the graph holds. The exact
/// search streams the embeddings once for all queries (blocks of rows against every query).
fn recall_at_k(data: &[f32], graph: &KnnGraph, queries: usize) -> (f64, f64) {
    let n = graph.len();
    let k = graph.k;
    if n == 0 || k == 0 {
        return (1.0, 1.0);
    }
    let step = (n / queries.min(n)).max(1);
    let qs: Vec<usize> = (0..n).step_by(step).collect();
    let merge = |mut a: Vec<Vec<(f32, usize)>>, b: Vec<Vec<(f32, usize)>>| {
        for (x, y) in a.iter_mut().zip(b) {
            x.extend(y);
            x.sort_unstable_by(|p, q| q.0.total_cmp(&p.0));
            x.truncate(k);
        }
        a
    };
    let truth = data
        .par_chunks(4096 * DIM)
        .enumerate()
        .map(|(block, rows)| {
            qs.iter()
                .map(|&q| {
                    let qv = &data[q * DIM..(q + 1) * DIM];
                    let mut best: Vec<(f32, usize)> = rows
                        .chunks_exact(DIM)
                        .enumerate()
                        .map(|(j, v)| (dot(qv, v), block * 4096 + j))
                        .filter(|&(_, j)| j != q)
                        .collect();
                    if best.len() > k {
                        best.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
                        best.truncate(k);
                    }
                    best
                })
                .collect::<Vec<_>>()
        })
        .reduce(|| vec![Vec::new(); qs.len()], merge);
    let (mut recall, mut hit, mut strong) = (0.0, 0usize, 0usize);
    for (&q, best) in qs.iter().zip(&truth) {
        let found: std::collections::HashSet<usize> = graph.row(q).map(|(j, _)| j).collect();
        recall += best.iter().filter(|b| found.contains(&b.1)).count() as f64 / k as f64;
        for b in best.iter().filter(|b| b.0 >= STRONG) {
            strong += 1;
            hit += usize::from(found.contains(&b.1));
        }
    }
    (recall / qs.len() as f64, hit as f64 / strong.max(1) as f64)
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

/// Clusters with at least two faces.
fn count_groups(roots: &[usize]) -> usize {
    let mut count = std::collections::HashMap::new();
    for &r in roots {
        *count.entry(r).or_insert(0usize) += 1;
    }
    count.values().filter(|&&c| c >= 2).count()
}

/// Peak resident memory since the last [`reset_peak_rss`] (Linux `VmHWM`).
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

/// Resets `VmHWM` to the current resident size (writing 5 to `clear_refs`, Linux >= 4.0), so
/// each size reports its own peak; where that fails the peak is the process's so far.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A synthetic unit embedding: `centre` plus Gaussian noise (or pure noise), appended to `out`.
fn unit_into(rng: &mut Rng, out: &mut Vec<f32>, centre: Option<&[f32]>, noise: f32) {
    let start = out.len();
    for k in 0..DIM {
        let c = centre.map_or(0.0, |c| c[k]);
        out.push(c + noise * rng.gaussian() / (DIM as f32).sqrt());
    }
    let v = &mut out[start..];
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}
