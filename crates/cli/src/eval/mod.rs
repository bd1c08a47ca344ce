//! `facegroup eval-groups LABELLED_DIR`: measures person grouping on a labelled dataset.
//!
//! The dataset is a folder per identity with `labels.csv` ([`dataset`]). Every photo is
//! embedded with the core pipeline ([`embed`]) and cached with all its faces ([`cache`]), so
//! re-runs only re-cluster; the labelled face of a photo is the face nearest the centre among
//! those at least half as tall as the largest, and a photo without faces counts as a missed
//! item. [`methods`] groups the faces with facegroup (a parameter grid when given) and the
//! baselines, [`report`] prints pairwise and BCubed precision/recall/F, and [`tuning`] chooses
//! parameters on one identity fold and reports them on the other (`--folds 2`), so defaults
//! are never judged on the people they were picked on.

mod agreement;
mod cache;
mod dataset;
mod embed;
mod lookalikes;
mod methods;
mod report;
mod tuning;

use std::path::PathBuf;

use anyhow::Result;
use facegroup_core::DetectMode;

use crate::args::EngineArgs;

use dataset::Subset;
use methods::Faces;
use report::Report;

/// Arguments of `facegroup eval-groups`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Labelled dataset: a folder with `labels.csv` (path,identity).
    pub dataset: PathBuf,
    /// Folder for the embedding cache.
    #[arg(long, default_value = "eval-out")]
    pub out: PathBuf,
    /// Threads, models and runtime, as for `facegroup run` (one pipeline per thread).
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Merge thresholds to try instead of the default (comma-separated): a parameter sweep.
    #[arg(long, value_delimiter = ',')]
    pub merge_thresholds: Vec<f32>,
    /// Pair thresholds to try instead of the default (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub pair_thresholds: Vec<f32>,
    /// Attach thresholds to try instead of the default (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub attach_thresholds: Vec<f32>,
    /// Cohesion ratios to try (comma-separated; 0 disables the cohesion test).
    #[arg(long, value_delimiter = ',')]
    pub cohesion_ratios: Vec<f32>,
    /// Cohesion priors to try (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub cohesion_priors: Vec<f32>,
    /// Cohesion prior weights to try, in ordered pairs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub cohesion_prior_pairs: Vec<f32>,
    /// Minimum person size instead of the default.
    #[arg(long)]
    pub min_cluster_size: Option<usize>,
    /// Neighbours per face in the kNN graph instead of the default.
    #[arg(long)]
    pub k: Option<usize>,
    /// Skip the baselines (for quick sweeps).
    #[arg(long)]
    pub no_baselines: bool,
    /// Split the identities into this many folds (by a hash of the identity name) and report
    /// each on its own; with a parameter grid, tune on each fold and report the others.
    #[arg(long, default_value_t = 1)]
    pub folds: usize,
    /// One JSON object per line and method instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Embed and group every detected face (background people too); score the labelled ones.
    #[arg(long)]
    pub all_faces: bool,
    /// Also embed the dataset in `exact` detection mode and report, per subset, how often this
    /// mode finds the labelled face where `exact` does, and both modes' BCubed F.
    #[arg(long)]
    pub detection_agreement: bool,
    /// Also group, on its own at the first settings of the grid, each of the N pairs of
    /// identities whose mean embeddings are closest (lookalikes, the stand-in for relatives).
    #[arg(long, value_name = "N")]
    pub lookalikes: Option<usize>,
}

/// The labelled dataset as the extra reports see it.
#[derive(Clone, Copy)]
struct Labelled<'a> {
    items: &'a [dataset::Item],
    /// Identity number per item.
    identity: &'a [u32],
    /// The dataset's name in the report.
    name: &'a str,
    json: bool,
}

/// Runs the evaluation and prints the report.
pub fn run(args: &EvalArgs) -> Result<()> {
    let items = dataset::read_labels(&args.dataset)?;
    let photos = embed::embed_cached(args, &items)?;
    let identity = dataset::identity_ids(&items);
    let name = args.dataset.file_name().map_or_else(
        || args.dataset.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    eprintln!(
        "{}: {} photos, {} identities, {} with a face",
        args.dataset.display(),
        items.len(),
        identity.iter().max().map_or(0, |m| m + 1),
        photos
            .iter()
            .filter(|p| p.as_ref().is_some_and(|p| p.labelled.is_some()))
            .count()
    );
    let grid = tuning::grid(args);
    let subsets: Vec<Subset> = dataset::subsets(&items, args.folds);
    let set = Labelled {
        items: &items,
        identity: &identity,
        name: &name,
        json: args.json,
    };
    if let Some(n) = args.lookalikes {
        lookalikes::report(&set, &photos, n, &grid[0])?;
    }
    if args.detection_agreement {
        let mut exact_args = args.clone();
        exact_args.engine.pipeline.det_mode = DetectMode::Exact;
        let exact = embed::embed_cached(&exact_args, &items)?;
        let mode = format!("{:?}", args.engine.pipeline.det_mode).to_lowercase();
        agreement::report(&set, &photos, &exact, &subsets, &mode)?;
    }
    let mut report = Report::new(args.json, name);
    let mut results = Vec::with_capacity(subsets.len());
    for subset in &subsets {
        let faces = Faces::new(&items, &identity, &photos, subset, args.all_faces);
        eprintln!(
            "{}: {} photos, {} faces grouped",
            subset.name,
            subset.items.len(),
            faces.len()
        );
        let mut rows = Vec::with_capacity(grid.len());
        for cfg in &grid {
            let row = methods::facegroup(&faces, cfg)?;
            report.row(&subset.name, &row);
            rows.push(row);
        }
        if !args.no_baselines {
            for row in methods::baselines(&faces) {
                report.row(&subset.name, &row);
            }
        }
        results.push(rows);
    }
    if subsets.len() > 1 && grid.len() > 1 {
        for (t, tuned) in results.iter().enumerate() {
            let Some(best) = tuning::pick(tuned) else {
                continue;
            };
            for (h, held) in results.iter().enumerate().filter(|&(h, _)| h != t) {
                let label = format!("{} tuned on {}", subsets[h].name, subsets[t].name);
                report.row(&label, &held[best]);
            }
        }
    }
    Ok(())
}
