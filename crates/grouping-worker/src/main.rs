//! `facegroup-grouping-worker`: consumes grouping jobs from SQS, groups a gallery's faces from
//! MongoDB into persons with `facegroup_core::group` (keeping the person ids of the committed
//! run), writes `s3://BUCKET/groups/{gallery}/{run}.json`, commits it in MongoDB under the
//! gallery's lease (`facegroup_worker::gallery`), sets person ids on the faces and copies the
//! pointer to `latest.json` for readers. Deletion jobs on the same queue erase an image, a
//! gallery or a person under the same lease ([`deletion`]). Exit codes: see the `facegroup_worker` crate docs
//! (3 when FAISS/the GPU fails the probe after a failed job).
//!
//! This file only wires flags to the engine: the lifecycle is `facegroup_worker::run`, the job
//! is [`handler::GroupingHandler`].

mod correction;
mod deletion;
mod handler;

use std::time::Duration;

use clap::Parser;
use facegroup_core::args::ModelArgs;
use facegroup_core::{ExecutionProvider, GroupConfig};
use facegroup_worker::gallery::GalleryStore;
use facegroup_worker::{CommonConfig, ThumbnailConfig, WorkerError};
use tracing::info;

use crate::handler::{GroupingHandler, LeaseTiming};

/// Grouping worker: SQS grouping jobs -> persons in S3 and MongoDB.
#[derive(Debug, Parser)]
#[command(name = "facegroup-grouping-worker", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonConfig,

    /// Key prefix of group results: PREFIX{gallery_id}/{run}.json and PREFIX{gallery_id}/latest.json.
    #[arg(long, env = "FACEGROUP_GROUPS_PREFIX", default_value = "groups/")]
    groups_prefix: String,

    /// Key prefix of the detection worker's per-image result JSONs, which deletion jobs erase
    /// (the detection worker's FACEGROUP_RESULTS_PREFIX).
    #[arg(long, env = "FACEGROUP_RESULTS_PREFIX", default_value = "faces/")]
    results_prefix: String,

    /// The detection worker's face thumbnails (the same FACEGROUP_THUMBNAILS_PREFIX): named for
    /// each person's representative, erased by deletion jobs.
    #[command(flatten)]
    thumbnails: ThumbnailConfig,

    /// The models whose faces are grouped (their file names make the model version: embeddings
    /// of different models are not comparable). `--provider cuda` searches the kNN graph with
    /// FAISS's GPU index (only in builds with `facegroup-core/gpu`, i.e. the CUDA image).
    #[command(flatten)]
    model: ModelArgs,

    /// Default minimum face quality (0-1) for a face to seed a person; jobs may override it.
    #[arg(long, env = "FACEGROUP_MIN_QUALITY", default_value_t = 0.0)]
    min_quality: f32,

    /// Seconds a gallery's grouping lease lasts without renewal (renewed every quarter of it
    /// while the job runs). A redelivered job of a dead worker takes its lease over at once;
    /// the expiry only frees leases whose message is gone.
    #[arg(long, env = "FACEGROUP_LEASE_SECS", default_value_t = 60)]
    lease_secs: u64,
}

fn main() {
    let cli = Cli::parse();
    let code = facegroup_worker::run(
        "grouping",
        &cli.common,
        cli.model.provider,
        || group_config(&cli),
        |config, services| GroupingHandler {
            galleries: GalleryStore::new(&services.mongo),
            services: services.clone(),
            queue_url: cli.common.queue_url.clone(),
            lease: LeaseTiming::new(Duration::from_secs(cli.lease_secs)),
            groups_prefix: cli.groups_prefix.clone(),
            results_prefix: cli.results_prefix.clone(),
            thumbnails_prefix: cli.thumbnails.prefix.clone(),
            model_version: cli.model.model_version(),
            config,
        },
    );
    std::process::exit(code);
}

/// Checks this worker's own flags and builds the grouping settings.
fn group_config(cli: &Cli) -> Result<GroupConfig, WorkerError> {
    if !(0.0..=1.0).contains(&cli.min_quality) {
        return Err(WorkerError::Config(format!(
            "min quality {} not in 0..=1",
            cli.min_quality
        )));
    }
    cli.thumbnails.validate()?;
    if cli.lease_secs == 0 || cli.lease_secs > 43_200 {
        return Err(WorkerError::Config(format!(
            "lease secs {} not in 1..=43200",
            cli.lease_secs
        )));
    }
    info!(
        config = %cli.common.redacted(),
        groups_prefix = %cli.groups_prefix,
        thumbnails_prefix = %cli.thumbnails.prefix,
        model_version = %cli.model.model_version(),
        min_quality = cli.min_quality,
        "starting grouping worker"
    );
    let mut config = GroupConfig {
        min_quality: cli.min_quality,
        ..GroupConfig::default()
    };
    // The CUDA image is built with the GPU index; a CPU container of the same image must not
    // try to use a GPU it does not have.
    config.knn.gpu = matches!(cli.model.provider, ExecutionProvider::Cuda { .. });
    Ok(config)
}
