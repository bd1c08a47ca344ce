//! Embedding the dataset: every photo through the core pipeline, one thread per pipeline of a
//! `facegroup_core::PipelinePool` (sessions must not run concurrently), with the same thread
//! and model flags as `facegroup run`. Results go through the cache.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use facegroup_core::{DetectMode, PipelinePool};

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
    let p = &args.engine.pipeline;
    // Everything that changes which faces are found goes into the key (`exact` ignores the
    // upscale limit), so two detection settings never share a cache.
    let detection = match p.det_mode {
        DetectMode::Exact => format!("|exact {} {}", p.det_size, p.det_thresh),
        DetectMode::Fast => format!("|fast {} {} {}", p.det_size, p.max_upscale, p.det_thresh),
    };
    let key = format!(
        "{}|{}+{}|{}{detection}",
        dataset.display(),
        p.model.detector,
        p.model.embedder,
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
    let cfg = args.engine.to_config();
    let pool = PipelinePool::new(&cfg.pipeline, cfg.pipelines).context("loading the pipeline")?;
    let threads = pool.size();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Photo>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items.len() {
                            return Ok(());
                        }
                        let path = dataset.join(&items[i].path);
                        let photo = fs::read(&path)
                            .map_err(anyhow::Error::from)
                            .and_then(|bytes| Ok(pool.with(|p| p.analyze_bytes(&bytes))?))
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
