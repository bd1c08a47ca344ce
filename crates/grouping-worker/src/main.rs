//! `facegroup-grouping-worker`: consumes grouping jobs from SQS, groups a gallery's faces from
//! MongoDB into persons with `facegroup_core::group` (keeping the person ids of the previous
//! run), writes `s3://BUCKET/groups/{gallery}/{run}.json` plus the `latest.json` pointer, and
//! sets person ids on the faces. Exit codes: see the `facegroup_worker` crate docs.

mod handler;

use std::path::Path;

use anyhow::Context;
use clap::Parser;
use facegroup_core::GroupConfig;
use facegroup_worker::{CommonConfig, Services, WorkerError};
use tracing::info;

use crate::handler::Grouping;

/// Grouping worker: SQS grouping jobs -> persons in S3 and MongoDB.
#[derive(Debug, Parser)]
#[command(name = "facegroup-grouping-worker", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonConfig,

    /// Key prefix of group results: PREFIX{gallery_id}/{run}.json and PREFIX{gallery_id}/latest.json.
    #[arg(long, env = "FACEGROUP_GROUPS_PREFIX", default_value = "groups/")]
    groups_prefix: String,

    /// Detector model file whose faces are grouped (with the embedder it names the model
    /// version; embeddings of different models are not comparable).
    #[arg(
        long,
        env = "FACEGROUP_DETECTOR",
        default_value = "scrfd_500m_bnkps.onnx"
    )]
    detector: String,

    /// Embedder model file whose faces are grouped.
    #[arg(long, env = "FACEGROUP_EMBEDDER", default_value = "w600k_mbf.onnx")]
    embedder: String,

    /// Where the kNN graph is searched: `cpu`, or `cuda`/`cuda:N` for FAISS's GPU index (only
    /// in builds with `facegroup-core/gpu`, i.e. the CUDA image; ignored otherwise).
    #[arg(long, env = "FACEGROUP_PROVIDER", default_value = "cpu")]
    provider: facegroup_core::ExecutionProvider,

    /// Default minimum face quality (0-1) for a face to seed a person; jobs may override it.
    #[arg(long, env = "FACEGROUP_MIN_QUALITY", default_value_t = 0.0)]
    min_quality: f32,
}

fn main() {
    let cli = Cli::parse();
    facegroup_worker::init_tracing();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<WorkerError>() {
            Some(w) => facegroup_worker::startup_failure(w),
            None => {
                tracing::error!(error = format!("{e:#}"), "unexpected failure");
                facegroup_worker::EXIT_UNEXPECTED
            }
        },
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    cli.common.validate()?;
    if !(0.0..=1.0).contains(&cli.min_quality) {
        return Err(
            WorkerError::Config(format!("min quality {} not in 0..=1", cli.min_quality)).into(),
        );
    }
    let model_version = format!("{}+{}", stem(&cli.detector), stem(&cli.embedder));
    info!(
        config = %cli.common.redacted(),
        groups_prefix = %cli.groups_prefix,
        model_version = %model_version,
        min_quality = cli.min_quality,
        "starting grouping worker"
    );
    let mut group_config = GroupConfig {
        min_quality: cli.min_quality,
        ..GroupConfig::default()
    };
    // The CUDA image is built with the GPU index; a CPU container of the same image must not
    // try to use a GPU it does not have.
    group_config.knn.gpu = matches!(cli.provider, facegroup_core::ExecutionProvider::Cuda { .. });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let shutdown = facegroup_worker::shutdown_on_signals()?;
        let services = Services::connect(&cli.common, "grouping").await?;
        services.start_gpu_metrics(cli.provider, &shutdown);
        let handler = Grouping {
            s3: services.s3.clone(),
            mongo: services.mongo.clone(),
            groups_prefix: cli.groups_prefix.clone(),
            model_version,
            config: group_config,
        };
        Ok(facegroup_worker::serve(&cli.common, &services, handler, shutdown).await)
    })
}

/// The model name as the detection worker records it (file name without extension).
fn stem(file: &str) -> String {
    Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
