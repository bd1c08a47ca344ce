//! Embedding the dataset: every photo through the core pipeline on a pool of threads, one
//! `Pipeline` per thread (ONNX Runtime sessions must not run concurrently), each with one
//! ONNX thread so the pool does not oversubscribe the CPUs. Results go through the cache.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use facegroup_core::{Pipeline, PipelineConfig};

use super::cache::{self, Embedded, Photo};
use super::dataset::{fnv1a, Item};
use super::EvalArgs;

/// Embeddings from the cache when its key matches, else computed and cached.
///
/// Two files: `cache-<key>.bin` (format 1, the labelled face of each photo, which older
/// builds read) and `faces-<key>.bin` (format 2, every detected face with its box). A run
/// that finds only format 1 and does not need every face uses it as it is.
pub fn embed_cached(args: &EvalArgs, items: &[Item]) -> Result<Vec<Option<Photo>>> {
    let dataset = fs::canonicalize(&args.dataset)
        .with_context(|| format!("dataset {}", args.dataset.display()))?;
    let key = format!(
        "{}|{}+{}|{}",
        dataset.display(),
        args.detector,
        args.embedder,
        items.len()
    );
    let hash = fnv1a(key.as_bytes());
    let all_faces = args.out.join(format!("faces-{hash:016x}.bin"));
    let labelled = args.out.join(format!("cache-{hash:016x}.bin"));
    if let Some(hit) = cache::read_photos(&all_faces, &key, items.len()) {
        eprintln!("embeddings from {}", all_faces.display());
        return Ok(hit);
    }
    if !args.all_faces {
        if let Some(hit) = cache::read_cache(&labelled, &key, items.len()) {
            eprintln!("embeddings from {}", labelled.display());
            return Ok(hit
                .into_iter()
                .map(|e| e.map(Photo::labelled_only))
                .collect());
        }
    }
    let photos = embed_all(args, &dataset, items)?;
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    cache::write_photos(&all_faces, &key, &photos)
        .with_context(|| format!("writing {}", all_faces.display()))?;
    let chosen: Vec<Option<Embedded>> = photos
        .iter()
        .map(|p| p.as_ref().and_then(|p| p.labelled().cloned()))
        .collect();
    cache::write_cache(&labelled, &key, &chosen)
        .with_context(|| format!("writing {}", labelled.display()))?;
    eprintln!("embeddings cached in {}", all_faces.display());
    Ok(photos)
}

fn embed_all(args: &EvalArgs, dataset: &Path, items: &[Item]) -> Result<Vec<Option<Photo>>> {
    let cfg = pipeline_config(args);
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Photo>>> = Mutex::new((0..items.len()).map(|_| None).collect());
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
                        let photo = fs::read(&path)
                            .map_err(anyhow::Error::from)
                            .and_then(|bytes| Ok(pipeline.analyze_bytes(&bytes)?))
                            .map(|(image, faces)| Photo::new(image.width(), image.height(), faces));
                        let photo = match photo {
                            Ok(p) => Some(p),
                            Err(e) => {
                                eprintln!("{}: {e:#}", path.display());
                                None
                            }
                        };
                        if let Ok(mut r) = results.lock() {
                            r[i] = photo;
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

fn pipeline_config(args: &EvalArgs) -> PipelineConfig {
    let mut cfg = PipelineConfig::with_models(&args.models_dir, &args.detector, &args.embedder);
    cfg.runtime.dylib_path = args.ort_dylib.clone();
    // Parallelism comes from the worker threads; one ONNX thread each avoids oversubscription.
    cfg.runtime.intra_threads = 1;
    cfg
}
