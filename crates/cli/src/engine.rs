//! The worker threads: one per pipeline of a `facegroup_core::PipelinePool`, pulling image paths
//! from a shared queue. Each worker reads, decodes and analyses its image, so decoding runs in
//! parallel too.
//!
//! Results come back in input order whatever the thread timing, so every output built from
//! them is deterministic. Bad images (unreadable, corrupt, too large) become failed results;
//! model or runtime errors stop the whole run, because they would fail every image alike.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use facegroup_core::{decode_image, DecodeOptions, Error, Face, PipelineConfig, PipelinePool};

/// Everything needed to build the pool.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Per-pipeline settings; `runtime.intra_threads` is already the per-session share.
    pub pipeline: PipelineConfig,
    /// Number of pipelines (K), i.e. worker threads.
    pub pipelines: usize,
    /// Total threads requested (N), for reporting.
    pub threads: usize,
}

/// What became of one image.
#[derive(Debug)]
pub struct ImageResult {
    pub path: PathBuf,
    /// The analysis, or why the image could not be used.
    pub outcome: Result<AnalyzedImage, String>,
}

/// A decoded and analysed image.
#[derive(Debug)]
pub struct AnalyzedImage {
    /// Size after EXIF orientation, the frame the face coordinates refer to.
    pub width: u32,
    pub height: u32,
    pub faces: Vec<Face>,
}

/// Wall time summed over all workers, per stage, since the engine was built.
#[derive(Debug, Default, Clone, Copy)]
pub struct StageTimes {
    pub read: Duration,
    pub decode: Duration,
    /// Detection, alignment, embedding and quality (one core call).
    pub analyze: Duration,
    /// Inside `analyze`, per core stage (summed over the pipelines).
    pub core: facegroup_core::StageTimes,
}

/// K ready pipelines.
pub struct Engine {
    pool: PipelinePool,
    decode: DecodeOptions,
    times: StageCounters,
}

impl Engine {
    /// Loads the models K times. Fails on the first model or runtime error.
    pub fn new(cfg: &EngineConfig) -> Result<Self> {
        let pool = PipelinePool::new(&cfg.pipeline, cfg.pipelines).context("loading models")?;
        tracing::info!(
            pipelines = pool.size(),
            intra_threads = cfg.pipeline.runtime.intra_threads,
            provider = %cfg.pipeline.runtime.provider,
            model_version = pool.model_version(),
            "pipelines ready"
        );
        Ok(Self {
            pool,
            decode: cfg.pipeline.decode,
            times: StageCounters::default(),
        })
    }

    /// The model version the faces are recorded under.
    pub fn model_version(&self) -> &str {
        self.pool.model_version()
    }

    /// Analyses `paths` with all pipelines and returns one result per path, in input order.
    ///
    /// `on_done` runs on the worker thread as soon as an image is finished, with its index in
    /// `paths`: callers use it for progress and to write per-face files in parallel (it may
    /// also drop data, such as crops, that it does not want kept until the end).
    pub fn analyze<F>(&self, paths: &[PathBuf], on_done: F) -> Result<Vec<ImageResult>>
    where
        F: Fn(usize, &mut ImageResult) + Sync,
    {
        let shared = Shared {
            paths,
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            decode: self.decode,
            times: &self.times,
        };
        let workers = self.pool.size().min(paths.len());
        let per_worker: Vec<Result<Vec<(usize, ImageResult)>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let (shared, on_done, pool) = (&shared, &on_done, &self.pool);
                    s.spawn(move || shared.work(pool, on_done))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });

        let mut slots: Vec<Option<ImageResult>> = paths.iter().map(|_| None).collect();
        for done in per_worker {
            for (i, result) in done? {
                slots[i] = Some(result);
            }
        }
        // Every index below paths.len() is claimed by exactly one worker, and a worker only
        // returns Ok after finishing all it claimed, so every slot is filled here.
        slots
            .into_iter()
            .zip(paths)
            .map(|(slot, path)| {
                slot.with_context(|| format!("{} was not analysed", path.display()))
            })
            .collect()
    }

    /// Time spent per stage so far, summed over workers.
    pub fn stage_times(&self) -> StageTimes {
        let get = |a: &AtomicU64| Duration::from_nanos(a.load(Ordering::Relaxed));
        StageTimes {
            read: get(&self.times.read),
            decode: get(&self.times.decode),
            analyze: get(&self.times.analyze),
            core: self.pool.stage_times(),
        }
    }
}

/// Image files under `dir`, recursively, sorted by path: `.jpg`, `.jpeg`, `.png`, `.webp`,
/// `.heic`, `.heif`, `.avif` in any letter case (the decoder then goes by content, so a HEIC
/// named `.jpg` decodes too). Unreadable sub-folders are logged and skipped; an unreadable `dir` is an
/// error.
pub fn find_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))?;
    walk(entries, &mut found);
    found.sort();
    Ok(found)
}

/// `path` relative to `root` with `/` separators, the stable name used in all outputs.
pub fn relative_name(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "heic", "heif", "avif"];

fn walk(entries: std::fs::ReadDir, found: &mut Vec<PathBuf>) {
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "skipping unreadable folder entry");
                continue;
            }
        };
        let path = entry.path();
        // file_type() does not follow symlinks; metadata() does, so linked folders and photos
        // are included like real ones.
        let is_dir = std::fs::metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if is_dir {
            match std::fs::read_dir(&path) {
                Ok(sub) => walk(sub, found),
                Err(e) => tracing::warn!(folder = %path.display(), error = %e, "skipping folder"),
            }
        } else if has_image_extension(&path) {
            found.push(path);
        }
    }
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

#[derive(Default)]
struct StageCounters {
    read: AtomicU64,
    decode: AtomicU64,
    analyze: AtomicU64,
}

impl StageCounters {
    fn add(counter: &AtomicU64, since: Instant) {
        let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counter.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// State the workers share: the queue (an index into `paths`) and the stop flag.
struct Shared<'a> {
    paths: &'a [PathBuf],
    next: AtomicUsize,
    stop: AtomicBool,
    decode: DecodeOptions,
    times: &'a StageCounters,
}

impl Shared<'_> {
    fn work<F>(&self, pool: &PipelinePool, on_done: &F) -> Result<Vec<(usize, ImageResult)>>
    where
        F: Fn(usize, &mut ImageResult),
    {
        let mut done = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(path) = self.paths.get(i) else { break };
            match self.analyze_one(pool, path) {
                Ok(mut result) => {
                    on_done(i, &mut result);
                    done.push((i, result));
                }
                Err(e) => {
                    // Other workers finish their current image and stop pulling new ones.
                    self.stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(done)
    }

    /// `Err` only for failures that would hit every image (model, runtime).
    fn analyze_one(&self, pool: &PipelinePool, path: &Path) -> Result<ImageResult> {
        let outcome = match self.read_and_analyze(pool, path) {
            Ok(image) => Ok(image),
            Err(Failure::BadImage(msg)) => {
                tracing::warn!(image = %path.display(), error = %msg, "skipping image");
                Err(msg)
            }
            Err(Failure::Fatal(e)) => {
                return Err(anyhow::Error::new(e).context(format!("analysing {}", path.display())))
            }
        };
        Ok(ImageResult {
            path: path.to_path_buf(),
            outcome,
        })
    }

    fn read_and_analyze(&self, pool: &PipelinePool, path: &Path) -> Result<AnalyzedImage, Failure> {
        let t = Instant::now();
        let bytes =
            std::fs::read(path).map_err(|e| Failure::BadImage(format!("cannot read file: {e}")))?;
        StageCounters::add(&self.times.read, t);

        // Decoding here rather than through Pipeline::analyze_bytes (same options, same
        // result) lets the stage timings separate decoding from inference.
        let t = Instant::now();
        let image = decode_image(&bytes, &self.decode)
            .map_err(|e| Failure::BadImage(Error::from(e).to_string()))?;
        StageCounters::add(&self.times.decode, t);

        let t = Instant::now();
        let faces = pool
            .with(|pipeline| pipeline.analyze(&image))
            .map_err(Failure::Fatal)?;
        StageCounters::add(&self.times.analyze, t);
        Ok(AnalyzedImage {
            width: image.width(),
            height: image.height(),
            faces,
        })
    }
}

enum Failure {
    BadImage(String),
    Fatal(facegroup_core::ModelError),
}
