//! `facegroup eval-groups LABELLED_DIR`: measures person grouping on a labelled dataset.
//!
//! The dataset is a folder per identity with `labels.csv` (`path,identity`, paths relative to
//! the dataset folder). Every photo is embedded with the core pipeline (one `Pipeline` per
//! worker thread, since sessions must not run concurrently); the labelled face of a photo is
//! the face nearest the centre among those at least half as tall as the largest, and a photo
//! without faces counts as an unassigned (missed) item. Embeddings are cached in
//! `OUT/cache-<key>.bin`, keyed by the dataset's path and the models, so re-runs only
//! re-cluster. The report gives pairwise and BCubed precision/recall/F for facegroup's
//! grouping and, on the same embeddings, for connected components at cos >= 0.5, DBSCAN
//! (eps 0.5 cosine distance, min_samples 3: Immich's defaults) and Immich-style incremental
//! assignment (maxDistance 0.5, minFaces 3).

use std::fs;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use facegroup_core::group::{baselines, metrics, FaceInput, GroupConfig};
use facegroup_core::{group_faces, Face, Pipeline, PipelineConfig};

/// Arguments of `facegroup eval-groups`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Labelled dataset: a folder with `labels.csv` (path,identity).
    pub dataset: PathBuf,
    /// Folder for the embedding cache.
    #[arg(long, default_value = "eval-out")]
    pub out: PathBuf,
    /// Folder holding the model files.
    #[arg(long, env = "FACEGROUP_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    #[arg(long, default_value = "scrfd_500m_bnkps.onnx")]
    pub detector: String,
    #[arg(long, default_value = "w600k_mbf.onnx")]
    pub embedder: String,
    /// `libonnxruntime.so`; defaults to ORT_DYLIB_PATH.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib: Option<PathBuf>,
    /// Embedding worker threads (each runs its own pipeline); 0 = one per CPU.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Merge thresholds to try instead of the default (comma-separated): a parameter sweep.
    #[arg(long, value_delimiter = ',')]
    pub merge_thresholds: Vec<f32>,
    /// Pair thresholds to try instead of the default (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub pair_thresholds: Vec<f32>,
    /// Attach thresholds to try instead of the default (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub attach_thresholds: Vec<f32>,
    /// Minimum person size instead of the default.
    #[arg(long)]
    pub min_cluster_size: Option<usize>,
    /// Neighbours per face in the kNN graph instead of the default.
    #[arg(long)]
    pub k: Option<usize>,
    /// Skip the baselines (for quick sweeps).
    #[arg(long)]
    pub no_baselines: bool,
}

/// Runs the evaluation and prints the table.
pub fn run(args: &EvalArgs) -> Result<()> {
    let items = read_labels(&args.dataset)?;
    let embedded = embed_cached(args, &items)?;
    let truth = identity_ids(&items);
    let found = embedded.iter().filter(|e| e.is_some()).count();
    println!(
        "{}: {} photos, {} identities, {} with a face",
        args.dataset.display(),
        items.len(),
        truth.iter().max().map_or(0, |m| m + 1),
        found
    );
    let faces: Vec<(usize, &Embedded)> = embedded
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((i, e.as_ref()?)))
        .collect();

    let base = GroupConfig::default();
    let merges = if args.merge_thresholds.is_empty() {
        vec![base.merge_threshold]
    } else {
        args.merge_thresholds.clone()
    };
    let attaches = if args.attach_thresholds.is_empty() {
        vec![None]
    } else {
        args.attach_thresholds.iter().copied().map(Some).collect()
    };
    let pairs = if args.pair_thresholds.is_empty() {
        vec![base.pair_threshold]
    } else {
        args.pair_thresholds.clone()
    };
    print_header();
    for (&pair, &merge, &attach) in pairs
        .iter()
        .flat_map(|p| merges.iter().map(move |m| (p, m)))
        .flat_map(|(p, m)| attaches.iter().map(move |a| (p, m, a)))
    {
        {
            let mut cfg = base.clone();
            cfg.pair_threshold = pair;
            cfg.merge_threshold = merge;
            cfg.attach_threshold = attach.unwrap_or(base.attach_threshold);
            if let Some(m) = args.min_cluster_size {
                cfg.min_cluster_size = m;
            }
            if let Some(k) = args.k {
                cfg.knn.k = k;
            }
            let started = Instant::now();
            let predicted = facegroup_labels(&faces, items.len(), &cfg)?;
            let name = format!(
                "facegroup (pair {:.2} merge {:.3} attach {:.3} min {})",
                cfg.pair_threshold, cfg.merge_threshold, cfg.attach_threshold, cfg.min_cluster_size
            );
            print_row(&name, &truth, &predicted, started);
        }
    }
    if args.no_baselines {
        return Ok(());
    }

    let dim = faces.first().map_or(0, |(_, e)| e.embedding.len());
    let data: Vec<f32> = faces
        .iter()
        .flat_map(|(_, e)| e.embedding.iter().copied())
        .collect();
    let started = Instant::now();
    let near = baselines::radius_neighbours(&data, dim, 0.5);
    let spread = |labels: Vec<Option<u32>>| {
        let mut all = vec![None; items.len()];
        for ((i, _), l) in faces.iter().zip(labels) {
            all[*i] = l;
        }
        all
    };
    print_row(
        "connected components, cos >= 0.5",
        &truth,
        &spread(baselines::connected_components(&near, 2)),
        started,
    );
    let started = Instant::now();
    print_row(
        "DBSCAN eps 0.5, min_samples 3",
        &truth,
        &spread(baselines::dbscan(&near, 3)),
        started,
    );
    // Immich sees faces in upload order; labels.csv is sorted by identity, which no gallery
    // is, so faces are taken in a fixed pseudo-random order (a hash of the photo path).
    let mut order: Vec<usize> = (0..faces.len()).collect();
    order.sort_by_key(|&f| (fnv1a(items[faces[f].0].path.as_bytes()), f));
    let mut position = vec![0u32; faces.len()];
    for (p, &f) in order.iter().enumerate() {
        position[f] = p as u32;
    }
    let permuted: baselines::Neighbourhoods = order
        .iter()
        .map(|&f| {
            near[f]
                .iter()
                .map(|&(j, s)| (position[j as usize], s))
                .collect()
        })
        .collect();
    let started = Instant::now();
    let by_position = baselines::immich(&permuted, 3);
    let labels = (0..faces.len())
        .map(|f| by_position[position[f] as usize])
        .collect();
    print_row(
        "Immich-style, maxDistance 0.5, minFaces 3",
        &truth,
        &spread(labels),
        started,
    );
    Ok(())
}

/// One labelled photo.
struct Item {
    path: String,
    identity: String,
}

/// The labelled face of one photo.
struct Embedded {
    embedding: Vec<f32>,
    quality_ok: bool,
    quality: f32,
}

fn read_labels(dataset: &Path) -> Result<Vec<Item>> {
    let csv = dataset.join("labels.csv");
    let text = fs::read_to_string(&csv).with_context(|| format!("reading {}", csv.display()))?;
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let Some((path, identity)) = line.rsplit_once(',') else {
            bail!("{}:{}: expected path,identity", csv.display(), n + 1);
        };
        items.push(Item {
            path: path.trim().to_owned(),
            identity: identity.trim().to_owned(),
        });
    }
    if items.is_empty() {
        bail!("{}: no labelled photos", csv.display());
    }
    Ok(items)
}

fn identity_ids(items: &[Item]) -> Vec<u32> {
    let mut names: Vec<&str> = items.iter().map(|i| i.identity.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    items
        .iter()
        .map(|i| names.binary_search(&i.identity.as_str()).unwrap_or(0) as u32)
        .collect()
}

fn pipeline_config(args: &EvalArgs) -> PipelineConfig {
    let mut cfg = PipelineConfig::with_models(&args.models_dir, &args.detector, &args.embedder);
    cfg.runtime.dylib_path = args.ort_dylib.clone();
    // Parallelism comes from the worker threads; one ONNX thread each avoids oversubscription.
    cfg.runtime.intra_threads = 1;
    cfg
}

/// Embeddings from the cache when its key matches, else computed and cached.
fn embed_cached(args: &EvalArgs, items: &[Item]) -> Result<Vec<Option<Embedded>>> {
    let dataset = fs::canonicalize(&args.dataset)
        .with_context(|| format!("dataset {}", args.dataset.display()))?;
    let key = format!(
        "{}|{}+{}|{}",
        dataset.display(),
        args.detector,
        args.embedder,
        items.len()
    );
    let cache = args
        .out
        .join(format!("cache-{:016x}.bin", fnv1a(key.as_bytes())));
    if let Some(hit) = read_cache(&cache, &key, items.len()) {
        eprintln!("embeddings from {}", cache.display());
        return Ok(hit);
    }
    let embedded = embed_all(args, &dataset, items)?;
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    write_cache(&cache, &key, &embedded).with_context(|| format!("writing {}", cache.display()))?;
    eprintln!("embeddings cached in {}", cache.display());
    Ok(embedded)
}

fn embed_all(args: &EvalArgs, dataset: &Path, items: &[Item]) -> Result<Vec<Option<Embedded>>> {
    let cfg = pipeline_config(args);
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Embedded>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut pipeline = Pipeline::new(&cfg).context("loading the pipeline")?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items.len() {
                            return Ok(());
                        }
                        let path = dataset.join(&items[i].path);
                        let face = fs::read(&path)
                            .map_err(anyhow::Error::from)
                            .and_then(|bytes| Ok(pipeline.analyze_bytes(&bytes)?))
                            .map(|(image, faces)| {
                                labelled_face(image.width(), image.height(), faces)
                            });
                        let face = match face {
                            Ok(f) => f,
                            Err(e) => {
                                eprintln!("{}: {e:#}", path.display());
                                None
                            }
                        };
                        if let Ok(mut r) = results.lock() {
                            r[i] = face;
                        }
                        if (i + 1).is_multiple_of(500) {
                            eprintln!(
                                "embedded {}/{} photos in {:.0} s",
                                i + 1,
                                items.len(),
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("embedding worker panicked"))??;
        }
        Ok(())
    })?;
    results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("embedding results poisoned"))
}

/// The face nearest the image centre among faces at least half as tall as the tallest.
fn labelled_face(width: u32, height: u32, faces: Vec<Face>) -> Option<Embedded> {
    let tallest = faces.iter().map(|f| f.bbox.height()).fold(0.0f32, f32::max);
    let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
    let centre_distance = |f: &Face| {
        let (x, y) = ((f.bbox.x1 + f.bbox.x2) / 2.0, (f.bbox.y1 + f.bbox.y2) / 2.0);
        (x - cx).powi(2) + (y - cy).powi(2)
    };
    let face = faces
        .into_iter()
        .filter(|f| f.bbox.height() >= tallest / 2.0)
        .min_by(|a, b| centre_distance(a).total_cmp(&centre_distance(b)))?;
    Some(Embedded {
        quality_ok: face.quality.passes(),
        quality: face.quality.overall,
        embedding: face.embedding,
    })
}

const CACHE_MAGIC: &[u8; 8] = b"FGEVAL01";

/// Layout: magic, key (u32 length + UTF-8), count u32, then per photo a flag byte (0: no
/// face) or 1, quality_ok u8, quality f32, dim u32, dim x f32; little-endian.
fn write_cache(path: &Path, key: &str, embedded: &[Option<Embedded>]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut w = BufWriter::new(fs::File::create(&tmp)?);
    w.write_all(CACHE_MAGIC)?;
    w.write_all(&(key.len() as u32).to_le_bytes())?;
    w.write_all(key.as_bytes())?;
    w.write_all(&(embedded.len() as u32).to_le_bytes())?;
    for e in embedded {
        match e {
            None => w.write_all(&[0])?,
            Some(e) => {
                w.write_all(&[1, e.quality_ok as u8])?;
                w.write_all(&e.quality.to_le_bytes())?;
                w.write_all(&(e.embedding.len() as u32).to_le_bytes())?;
                for x in &e.embedding {
                    w.write_all(&x.to_le_bytes())?;
                }
            }
        }
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    // Written aside and renamed so an interrupted run never leaves a truncated cache.
    fs::rename(tmp, path)
}

/// The cached embeddings, or `None` when the file is missing, corrupt or for another key.
fn read_cache(path: &Path, key: &str, count: usize) -> Option<Vec<Option<Embedded>>> {
    let mut r = BufReader::new(fs::File::open(path).ok()?);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).ok()?;
    if &magic != CACHE_MAGIC {
        return None;
    }
    let key_len = read_u32(&mut r)? as usize;
    let stored_key = read_bytes(&mut r, key_len)?;
    if stored_key != key.as_bytes() || read_u32(&mut r)? as usize != count {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let flag = read_bytes(&mut r, 1)?;
        if flag[0] == 0 {
            out.push(None);
            continue;
        }
        let ok = read_bytes(&mut r, 1)?[0] == 1;
        let quality = f32::from_le_bytes(read_bytes(&mut r, 4)?.try_into().ok()?);
        let dim = read_u32(&mut r)? as usize;
        if dim > 4096 {
            return None;
        }
        let raw = read_bytes(&mut r, dim * 4)?;
        let embedding = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push(Some(Embedded {
            embedding,
            quality_ok: ok,
            quality,
        }));
    }
    Some(out)
}

fn read_u32(r: &mut impl Read) -> Option<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).ok()?;
    Some(u32::from_le_bytes(b))
}

fn read_bytes(r: &mut impl Read, n: usize) -> Option<Vec<u8>> {
    let mut b = vec![0u8; n];
    r.read_exact(&mut b).ok()?;
    Some(b)
}

/// Stable 64-bit FNV-1a (std's hasher is randomly seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// facegroup's grouping of the embedded faces, as a cluster id per photo.
fn facegroup_labels(
    faces: &[(usize, &Embedded)],
    n: usize,
    cfg: &GroupConfig,
) -> Result<Vec<Option<u32>>> {
    let inputs: Vec<FaceInput> = faces
        .iter()
        .map(|(i, e)| FaceInput {
            face_id: format!("{i:07}"),
            image_id: format!("{i:07}"),
            embedding: e.embedding.clone(),
            quality_ok: e.quality_ok,
            quality: e.quality,
        })
        .collect();
    let groups = group_faces(&inputs, cfg, None)?;
    let mut labels = vec![None; n];
    for (p, person) in groups.persons.iter().enumerate() {
        for id in &person.face_ids {
            let i: usize = id.parse().context("face id")?;
            labels[i] = Some(p as u32);
        }
    }
    Ok(labels)
}

fn print_header() {
    println!(
        "| {:<46} | {:>6} {:>6} {:>6} | {:>6} {:>6} {:>6} | {:>7} | {:>6} |",
        "method", "pw P", "pw R", "pw F", "B3 P", "B3 R", "B3 F", "persons", "secs"
    );
    println!(
        "|{:-<48}|{:-<22}|{:-<22}|{:-<9}|{:-<8}|",
        "", "", "", "", ""
    );
}

fn print_row(name: &str, truth: &[u32], predicted: &[Option<u32>], started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    let s = metrics::score(truth, predicted);
    let persons = {
        let mut ids: Vec<u32> = predicted.iter().flatten().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    };
    println!(
        "| {:<46} | {:.4} {:.4} {:.4} | {:.4} {:.4} {:.4} | {:>7} | {:>6.2} |",
        name,
        s.pairwise.precision,
        s.pairwise.recall,
        s.pairwise.f,
        s.bcubed.precision,
        s.bcubed.recall,
        s.bcubed.f,
        persons,
        secs
    );
}
