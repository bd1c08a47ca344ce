//! `facegroup run PHOTOS_DIR --out OUT_DIR`: bring the library store of a photo folder up to
//! date, then regroup and write the exports and the HTML report.
//!
//! A run compares the folder with the store ([`crate::store`]): photos whose path, size and
//! mtime match are kept; on a size or mtime mismatch the content hash decides (a touched but
//! identical file is not analysed again); new and changed photos are analysed in batches, each
//! batch committed in one transaction; photos gone from the folder are forgotten with their
//! faces and crops; photos the user forgot (`facegroup forget`) are skipped while their content
//! is the one forgotten. Only then does grouping run ([`crate::grouping`]), so a run killed during
//! analysis leaves the previous grouping and the committed batches, and the next run carries on.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::EngineArgs;
use crate::engine::{find_images, relative_name, Engine, ImageResult};
use crate::grouping::{self, Change};
use crate::store::{content_hash, Analysed, FileState, RunDetails, RunRecord, Store, Tombstone};
use crate::{corrections, output};
use facegroup_core::GroupMode;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Folder of photos, searched recursively for .jpg, .jpeg, .png, .webp, .heic, .heif and .avif files.
    pub photos_dir: PathBuf,
    /// Output folder: the store facegroup.db, crops, exports and report (created if missing).
    #[arg(long, short, env = "FACEGROUP_OUT")]
    pub out: PathBuf,
    /// Grouping of faces into persons [default: keep the grouping when nothing changed,
    /// incremental when at most 10% of the photos changed, full otherwise].
    #[arg(long, env = "FACEGROUP_GROUP_MODE", value_enum)]
    pub group_mode: Option<GroupMode>,
    /// Do not group faces into persons.
    #[arg(long, env = "FACEGROUP_NO_GROUP")]
    pub no_group: bool,
    /// Do not write faces.jsonl, images.jsonl and groups.json (`facegroup export` writes them
    /// from the store at any time).
    #[arg(long, env = "FACEGROUP_NO_EXPORT")]
    pub no_export: bool,
    /// Photos analysed per committed batch: a killed run loses at most one batch of work.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Test-only: after this many committed batches the run reports it on stderr and waits to be
/// killed, so tests can SIGKILL it at a known point.
const STOP_AFTER_BATCHES_ENV: &str = "FACEGROUP_TEST_STOP_AFTER_BATCHES";

pub fn run(args: &RunArgs) -> Result<()> {
    let start = Instant::now();
    let cfg = args.engine.to_config();
    let model_version = facegroup_core::model_version(
        &cfg.pipeline.detector.model_path,
        &cfg.pipeline.embedder.model_path,
    );
    let paths = find_images(&args.photos_dir)?;
    if paths.is_empty() {
        tracing::warn!(dir = %args.photos_dir.display(), "no .jpg/.jpeg/.png/.webp/.heic/.heif/.avif files found");
    }
    let out = &args.out;
    std::fs::create_dir_all(out.join(output::CROPS_DIR))
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    let mut store = Store::open(out)?;
    let plan = plan(&args.photos_dir, &paths, &store, &model_version)?;

    for name in &plan.removed {
        output::remove_crops(out, name)?;
    }
    store.forget(&plan.removed)?;
    store.touch(&plan.touched)?;
    store.touch_forgotten(&plan.touched_forgotten)?;
    let analysed = plan.analyse.len();
    if analysed > 0 {
        // Models only when there is work: an unchanged re-run needs none.
        let engine = Engine::new(&cfg)?;
        // The plan compared stored versions with the one named by the flags; the pool must
        // record faces under that same version.
        anyhow::ensure!(
            engine.model_version() == model_version,
            "models report version {}, expected {model_version}",
            engine.model_version()
        );
        analyse(args, &engine, &mut store, &plan.analyse, &model_version)?;
        log_stage_times(&engine);
    }

    let faces = store.faces()?;
    let previous = store.groups()?;
    let change = Change {
        analysed,
        removed: plan.removed.len(),
        total: paths.len(),
    };
    let details = RunDetails {
        // Absolute, so the report links the photos whatever folder a later command runs in.
        photos_dir: std::fs::canonicalize(&args.photos_dir)
            .unwrap_or_else(|_| args.photos_dir.clone())
            .display()
            .to_string(),
        detector: file_name(&cfg.pipeline.detector.model_path),
        embedder: file_name(&cfg.pipeline.embedder.model_path),
        model_version: model_version.clone(),
        seconds: start.elapsed().as_secs_f64(),
    };
    let mode = if args.no_group {
        None
    } else {
        grouping::choose_mode(args.group_mode, previous.is_some(), change)
    };
    let groups = match mode {
        Some(mode) => {
            let stale: HashSet<String> = plan.analyse.iter().map(|p| p.name.clone()).collect();
            let book = corrections::for_run(out, &store)?;
            Some(grouping::group(&faces, previous, &stale, mode, &book)?)
        }
        None => None,
    };
    store.finish_run(
        &RunRecord {
            finished_ms: now_ms(),
            analysed,
            unchanged: plan.unchanged,
            removed: plan.removed.len(),
            group_mode: groups.as_ref().map(|(_, m)| m.as_str()),
            details: details.clone(),
        },
        groups.as_ref().map(|(g, _)| g),
    )?;
    drop(faces);

    let (images, groups) =
        output::write_outputs(out, &store, &details, !args.no_export, !args.no_group)?;
    let seconds = start.elapsed().as_secs_f64();
    print_summary(&plan, &images, groups.as_ref(), seconds, out);
    Ok(())
}

/// A photo to analyse.
struct ToAnalyse {
    path: PathBuf,
    name: String,
}

/// What a run has to do, from comparing the folder with the store.
struct Plan {
    analyse: Vec<ToAnalyse>,
    /// Same content, new size or mtime: only the stored file state is updated.
    touched: Vec<(String, FileState)>,
    unchanged: usize,
    /// Stored photos no longer in the folder.
    removed: Vec<String>,
    /// Forgotten photos still in the folder with the forgotten content: skipped.
    forgotten: usize,
    /// Of those, the ones with a new size or mtime.
    touched_forgotten: Vec<(String, Tombstone)>,
}

fn plan(root: &Path, paths: &[PathBuf], store: &Store, model_version: &str) -> Result<Plan> {
    let mut stored = store.file_states()?;
    let forgotten = store.forgotten_images()?;
    let mut plan = Plan {
        analyse: Vec::new(),
        touched: Vec::new(),
        unchanged: 0,
        removed: Vec::new(),
        forgotten: 0,
        touched_forgotten: Vec::new(),
    };
    for path in paths {
        let name = relative_name(root, path);
        let analyse = ToAnalyse {
            path: path.clone(),
            name: name.clone(),
        };
        if let Some(tomb) = forgotten.get(&name) {
            // Skipped while the content is the forgotten one; a changed file is a new photo
            // (its analysis replaces the tombstone, see `Store::commit_batch`).
            match compare(path, tomb.size, tomb.mtime_ns, &tomb.hash) {
                Seen::Same => plan.forgotten += 1,
                Seen::Touched { size, mtime_ns } => {
                    plan.forgotten += 1;
                    let hash = tomb.hash.clone();
                    let tomb = Tombstone {
                        size,
                        mtime_ns,
                        hash,
                    };
                    plan.touched_forgotten.push((name, tomb));
                }
                Seen::Changed => plan.analyse.push(analyse),
            }
            continue;
        }
        let known = stored.remove(&name);
        let Some(known) = known.filter(|k| k.model_version == model_version) else {
            plan.analyse.push(analyse);
            continue;
        };
        match compare(path, known.size, known.mtime_ns, &known.hash) {
            Seen::Same => plan.unchanged += 1,
            Seen::Touched { size, mtime_ns } => {
                plan.unchanged += 1;
                let state = FileState {
                    size,
                    mtime_ns,
                    ..known
                };
                plan.touched.push((name, state));
            }
            Seen::Changed => plan.analyse.push(analyse),
        }
    }
    plan.removed = stored.into_keys().collect();
    plan.removed.sort();
    Ok(plan)
}

/// How a file compares with a stored size, mtime and content hash.
enum Seen {
    Same,
    /// Same content, new size or mtime.
    Touched {
        size: u64,
        mtime_ns: i64,
    },
    Changed,
}

/// Size and mtime first; the content hash only decides on a mismatch, so an unchanged
/// library is not read again.
fn compare(path: &Path, size: u64, mtime_ns: i64, hash: &str) -> Seen {
    let (now_size, now_mtime) = file_stat(path);
    if (now_size, now_mtime) == (size, mtime_ns) {
        return Seen::Same;
    }
    let now_hash = std::fs::read(path).ok().map(|b| content_hash(&b));
    if now_hash.as_deref() == Some(hash) {
        Seen::Touched {
            size: now_size,
            mtime_ns: now_mtime,
        }
    } else {
        Seen::Changed
    }
}

/// Analyses the photos batch by batch, committing each batch in one transaction.
fn analyse(
    args: &RunArgs,
    engine: &Engine,
    store: &mut Store,
    todo: &[ToAnalyse],
    model_version: &str,
) -> Result<()> {
    let out = &args.out;
    let stop_after: Option<usize> = std::env::var(STOP_AFTER_BATCHES_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    let progress = progress_bar(todo.len());
    let names: HashMap<&Path, &str> = todo
        .iter()
        .map(|t| (t.path.as_path(), t.name.as_str()))
        .collect();
    for (n, batch) in todo.chunks(args.batch_size as usize).enumerate() {
        for t in batch {
            output::remove_crops(out, &t.name)?;
        }
        let paths: Vec<PathBuf> = batch.iter().map(|t| t.path.clone()).collect();
        let crop_error = Mutex::new(None);
        let results = engine.analyze(&paths, |_, result| {
            let name = names
                .get(result.path.as_path())
                .copied()
                .unwrap_or_default();
            write_crops_and_drop(out, name, result, &crop_error);
            progress.inc(1);
        })?;
        if let Some(e) = crop_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        let analysed: Vec<Analysed> = batch
            .iter()
            .zip(results)
            .map(|(t, r)| to_analysed(t, r, model_version))
            .collect();
        for (name, index) in store.commit_batch(&analysed)? {
            output::remove_crop(out, &name, index)?;
        }
        if stop_after == Some(n + 1) {
            eprintln!(
                "test hook: committed {} batches, waiting to be killed",
                n + 1
            );
            loop {
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        }
    }
    progress.finish_and_clear();
    Ok(())
}

fn to_analysed(t: &ToAnalyse, result: ImageResult, model_version: &str) -> Analysed {
    let (size, mtime_ns) = file_stat(&t.path);
    // Read again for the hash (from the page cache): the engine does not hand the bytes back.
    let hash = std::fs::read(&t.path)
        .map(|b| content_hash(&b))
        .unwrap_or_default();
    let (outcome, faces) = match result.outcome {
        Ok(a) => {
            let faces = a
                .faces
                .iter()
                .map(|f| facegroup_core::FaceRecord::new(&t.name, model_version, f))
                .collect();
            (Ok((a.width, a.height)), faces)
        }
        Err(e) => (Err(e), Vec::new()),
    };
    Analysed {
        name: t.name.clone(),
        file: FileState {
            size,
            mtime_ns,
            hash,
            model_version: model_version.to_string(),
        },
        outcome,
        faces,
    }
}

/// Size and mtime (ns since the epoch); zeros when unreadable, which never match a stored
/// state of a readable file.
fn file_stat(path: &Path) -> (u64, i64) {
    std::fs::metadata(path).map_or((0, 0), |m| {
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        (m.len(), mtime)
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Crops are written from the worker threads as images finish, so JPEG encoding runs in
/// parallel and the pixels need not be held until the end. The first write error is kept and
/// ends the run after the pool drains.
fn write_crops_and_drop(
    out: &Path,
    name: &str,
    result: &mut ImageResult,
    first_error: &Mutex<Option<anyhow::Error>>,
) {
    let Ok(analyzed) = &mut result.outcome else {
        return;
    };
    if let Err(e) = output::write_crops(out, name, &analyzed.faces) {
        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
    }
    for face in &mut analyzed.faces {
        face.crop = facegroup_core::RgbImage::new(0, 0);
    }
}

/// A bar on stderr, hidden when stderr is not a terminal (logs, CI, pipes).
fn progress_bar(len: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

fn print_summary(
    plan: &Plan,
    images: &[crate::store::StoredImage],
    groups: Option<&facegroup_core::group::Groups>,
    seconds: f64,
    out: &Path,
) {
    let failed = images.iter().filter(|i| i.error.is_some()).count();
    let faces: usize = images.iter().map(|i| i.faces.len()).sum();
    let persons = groups.map_or_else(String::new, |g| {
        format!(
            ", {} persons ({} faces unassigned)",
            g.persons.len(),
            g.unassigned.len()
        )
    });
    let forgotten = if plan.forgotten > 0 {
        format!(" ({} forgotten photos skipped)", plan.forgotten)
    } else {
        String::new()
    };
    println!(
        "{} analysed, {} unchanged, {} removed; {} images ok, {failed} failed, {faces} faces{persons} in {seconds:.2} s{forgotten}; output in {}",
        plan.analyse.len(),
        plan.unchanged,
        plan.removed.len(),
        images.len() - failed,
        out.display()
    );
}

fn log_stage_times(engine: &Engine) {
    let t = engine.stage_times();
    tracing::debug!(
        read_s = t.read.as_secs_f64(),
        decode_s = t.decode.as_secs_f64(),
        analyze_s = t.analyze.as_secs_f64(),
        "time per stage, summed over workers"
    );
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
