//! `facegroup bench DIR`: end-to-end throughput of the same engine `run` uses (read, decode,
//! detect, align, embed, quality), without writing outputs. `--json` prints the line
//! `scripts/bench-vs-insightface.sh` reads.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::args::EngineArgs;
use crate::engine::{find_images, Engine, ImageResult, StageTimes};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Folder of images to process.
    pub dir: PathBuf,
    /// Timed passes over the folder.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Untimed passes first (session warm-up, file cache).
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// Print one JSON line instead of a sentence.
    #[arg(long)]
    pub json: bool,
    /// Also print where the time of the timed passes went, per stage (on stderr with --json).
    #[arg(long)]
    pub profile: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The JSON line; keys and order are what the comparison script expects.
#[derive(Debug, Serialize)]
struct BenchResult {
    #[serde(rename = "impl")]
    implementation: &'static str,
    threads: usize,
    images: usize,
    faces: usize,
    seconds: f64,
    images_per_s: f64,
    faces_per_s: f64,
    peak_rss_mib: f64,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let cfg = args.engine.to_config();
    let paths = find_images(&args.dir)?;
    if paths.is_empty() {
        bail!("no images in {}", args.dir.display());
    }
    let engine = Engine::new(&cfg)?;
    for _ in 0..args.warmup {
        engine.analyze(&paths, |_, _| {})?;
    }
    let warm = engine.stage_times();

    let (mut images, mut faces) = (0, 0);
    let start = Instant::now();
    for _ in 0..args.repeat {
        let results = engine.analyze(&paths, |_, _| {})?;
        images += results.len();
        faces += count_faces(&results);
    }
    let seconds = start.elapsed().as_secs_f64();

    let total = engine.stage_times();
    if args.profile {
        let table = profile(&warm, &total, seconds, cfg.threads);
        if args.json {
            eprint!("{table}");
        } else {
            print!("{table}");
        }
    }
    tracing::info!(
        read_s = round((total.read - warm.read).as_secs_f64(), 3),
        decode_s = round((total.decode - warm.decode).as_secs_f64(), 3),
        analyze_s = round((total.analyze - warm.analyze).as_secs_f64(), 3),
        pipelines = cfg.pipelines,
        intra_threads = cfg.pipeline.runtime.intra_threads,
        "timed passes: time per stage, summed over workers"
    );
    let result = BenchResult {
        implementation: "facegroup",
        threads: cfg.threads,
        images,
        faces,
        seconds: round(seconds, 4),
        images_per_s: round(images as f64 / seconds, 3),
        faces_per_s: round(faces as f64 / seconds, 3),
        peak_rss_mib: peak_rss_mib().map_or(0.0, |m| round(m, 1)),
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "facegroup: {} images, {} faces in {:.2} s: {:.2} images/s, {:.2} faces/s \
             (threads {}, pipelines {} x {} intra-op), peak RSS {:.1} MiB",
            result.images,
            result.faces,
            result.seconds,
            result.images_per_s,
            result.faces_per_s,
            cfg.threads,
            cfg.pipelines,
            cfg.pipeline.runtime.intra_threads,
            result.peak_rss_mib
        );
    }
    Ok(())
}

/// The per-stage table of `--profile`: seconds summed over workers, milliseconds per image,
/// and share of the workers' time (`threads x wall`); what no stage accounts for is waiting
/// (for a free pipeline, for work at the end of a pass) or scheduling.
fn profile(warm: &StageTimes, total: &StageTimes, wall: f64, threads: usize) -> String {
    let d = |a: std::time::Duration, b: std::time::Duration| (a - b).as_secs_f64();
    let (c, w) = (&total.core, &warm.core);
    let images = (c.images - w.images).max(1) as f64;
    let faces = c.faces - w.faces;
    let rows = [
        ("read", d(total.read, warm.read)),
        ("decode", d(total.decode, warm.decode)),
        ("detect (letterbox, SCRFD, post)", d(c.detect, w.detect)),
        ("align", d(c.align, w.align)),
        ("embed (ArcFace)", d(c.embed, w.embed)),
        ("quality", d(c.quality, w.quality)),
    ];
    let budget = wall * threads.max(1) as f64;
    let busy: f64 = rows.iter().map(|r| r.1).sum();
    let mut out =
        "| stage | seconds (all workers) | ms per image | share |\n|---|---:|---:|---:|\n"
            .to_string();
    for (name, s) in rows
        .iter()
        .chain([&("idle / other", (budget - busy).max(0.0))])
    {
        out += &format!(
            "| {name} | {s:.3} | {:.2} | {:.1}% |\n",
            s * 1000.0 / images,
            100.0 * s / budget
        );
    }
    out += &format!("({images} images, {faces} faces, {threads} threads x {wall:.2} s wall)\n");
    out
}

fn count_faces(results: &[ImageResult]) -> usize {
    results
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok())
        .map(|a| a.faces.len())
        .sum()
}

/// Peak resident set size (VmHWM) from /proc/self/status; `None` off Linux.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}
