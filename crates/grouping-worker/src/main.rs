//! `facegroup-grouping-worker`: consumes grouping jobs from SQS, groups a gallery's faces from
//! MongoDB into persons with `facegroup_core::group` (keeping the person ids of the previous
//! run), writes `s3://BUCKET/groups/{gallery}/{run}.json` plus the `latest.json` pointer, and
//! sets person ids on the faces. Exit codes: see the `facegroup_worker` crate docs.
//!
//! This file only wires flags to the engine: the lifecycle is `facegroup_worker::run`, the job
//! is [`handler::GroupingHandler`].

mod handler;

use clap::Parser;
use facegroup_core::args::ModelArgs;
use facegroup_core::{ExecutionProvider, GroupConfig};
use facegroup_worker::{CommonConfig, WorkerError};
use tracing::info;

use crate::handler::GroupingHandler;

/// Grouping worker: SQS grouping jobs -> persons in S3 and MongoDB.
#[derive(Debug, Parser)]
#[command(name = "facegroup-grouping-worker", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonConfig,

    /// Key prefix of group results: PREFIX{gallery_id}/{run}.json and PREFIX{gallery_id}/latest.json.
    #[arg(long, env = "FACEGROUP_GROUPS_PREFIX", default_value = "groups/")]
    groups_prefix: String,

    /// The models whose faces are grouped (their file names make the model version: embeddings
    /// of different models are not comparable). `--provider cuda` searches the kNN graph with
    /// FAISS's GPU index (only in builds with `facegroup-core/gpu`, i.e. the CUDA image).
    #[command(flatten)]
    model: ModelArgs,

    /// Default minimum face quality (0-1) for a face to seed a person; jobs may override it.
    #[arg(long, env = "FACEGROUP_MIN_QUALITY", default_value_t = 0.0)]
    min_quality: f32,
}

fn main() {
    let cli = Cli::parse();
    let code = facegroup_worker::run(
        "grouping",
        &cli.common,
        cli.model.provider,
        || group_config(&cli),
        |config, services| GroupingHandler {
            s3: services.s3.clone(),
            mongo: services.mongo.clone(),
            groups_prefix: cli.groups_prefix.clone(),
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
    info!(
        config = %cli.common.redacted(),
        groups_prefix = %cli.groups_prefix,
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
