//! `facegroup run PHOTOS_DIR --out OUT_DIR`: analyse a photo folder and write faces, crops and
//! the HTML report.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::EngineArgs;
use crate::engine::{find_images, relative_name, Engine, ImageResult};
use crate::grouping;
use crate::{output, report};
use facegroup_core::GroupMode;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Folder of photos, searched recursively for .jpg, .jpeg, .png and .webp files.
    pub photos_dir: PathBuf,
    /// Output folder (created if missing; existing files are overwritten).
    #[arg(long, short, env = "FACEGROUP_OUT")]
    pub out: PathBuf,
    /// Grouping of faces into persons (written to groups.json).
    #[arg(long, env = "FACEGROUP_GROUP_MODE", value_enum, default_value_t = GroupMode::Full)]
    pub group_mode: GroupMode,
    /// Do not group faces into persons.
    #[arg(long, env = "FACEGROUP_NO_GROUP")]
    pub no_group: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(args: &RunArgs) -> Result<()> {
    let cfg = args.engine.to_config();
    // Models first: a missing model or runtime should fail before any output is created.
    let engine = Engine::new(&cfg)?;
    let paths = find_images(&args.photos_dir)?;
    if paths.is_empty() {
        tracing::warn!(dir = %args.photos_dir.display(), "no .jpg/.jpeg/.png/.webp files found");
    }
    let out = &args.out;
    std::fs::create_dir_all(out.join(output::CROPS_DIR))
        .with_context(|| format!("cannot create output folder {}", out.display()))?;

    let start = Instant::now();
    let progress = progress_bar(paths.len());
    let crop_error = Mutex::new(None);
    let results = engine.analyze(&paths, |_, result| {
        let name = relative_name(&args.photos_dir, &result.path);
        write_crops_and_drop(out, &name, result, &crop_error);
        progress.inc(1);
    })?;
    progress.finish_and_clear();
    if let Some(e) = crop_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let seconds = start.elapsed().as_secs_f64();

    let names: Vec<String> = results
        .iter()
        .map(|r| relative_name(&args.photos_dir, &r.path))
        .collect();
    let model_version = engine.model_version();
    let groups = if args.no_group {
        None
    } else {
        Some(grouping::group_and_write(
            out,
            model_version,
            &names,
            &results,
            args.group_mode,
        )?)
    };
    let persons = grouping::person_of(groups.as_ref());
    output::write_records(out, model_version, &names, &results, &persons)?;
    let info = report::RunInfo {
        detector: file_name(&cfg.pipeline.detector.model_path),
        embedder: file_name(&cfg.pipeline.embedder.model_path),
        model_version: model_version.to_string(),
        seconds,
    };
    report::write(out, &info, &names, &results, groups.as_ref())?;
    print_summary(&results, groups.as_ref(), seconds, out);
    log_stage_times(&engine);
    Ok(())
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
    results: &[ImageResult],
    groups: Option<&facegroup_core::group::Groups>,
    seconds: f64,
    out: &Path,
) {
    let failed = results.iter().filter(|r| r.outcome.is_err()).count();
    let faces: usize = results
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok())
        .map(|a| a.faces.len())
        .sum();
    let persons = groups.map_or_else(String::new, |g| {
        format!(
            ", {} persons ({} faces unassigned)",
            g.persons.len(),
            g.unassigned.len()
        )
    });
    println!(
        "{} images ok, {failed} failed, {faces} faces{persons} in {seconds:.2} s ({:.2} images/s); output in {}",
        results.len() - failed,
        results.len() as f64 / seconds.max(1e-9),
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
