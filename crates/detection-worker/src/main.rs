//! `facegroup-detection-worker`: consumes detection jobs from SQS, runs the facegroup core
//! pipeline on each image read from S3, and writes faces and image status to MongoDB plus a
//! per-image faces JSON and each face's thumbnails to S3. Exit codes: see the `facegroup_worker` crate docs (0 normal,
//! 1 unexpected, 2 configuration error, 3 GPU/runtime failure).
//!
//! This file only wires flags to the engine: the lifecycle is `facegroup_worker::run`, the job
//! is [`handler::DetectionHandler`], the pipelines are a `facegroup_core::PipelinePool`.

mod handler;

use std::sync::Arc;

use clap::Parser;
use facegroup_core::args::PipelineArgs;
use facegroup_core::{ModelError, PipelinePool};
use facegroup_worker::{CommonConfig, ThumbnailConfig, WorkerError};
use tracing::info;

use crate::handler::DetectionHandler;

/// Detection worker: SQS detection jobs -> faces in MongoDB and S3.
#[derive(Debug, Parser)]
#[command(name = "facegroup-detection-worker", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonConfig,

    /// Queue to send grouping jobs to; unset disables automatic grouping.
    #[arg(long, env = "FACEGROUP_GROUPING_QUEUE_URL")]
    grouping_queue_url: Option<String>,

    /// New faces in a gallery that trigger a grouping job (one pending per gallery).
    #[arg(long, env = "FACEGROUP_GROUP_AFTER_FACES", default_value_t = 50)]
    group_after_faces: usize,

    /// Seconds a sent grouping job counts as pending (no other is sent for the gallery); once
    /// over, a later detection re-sends one, so a lost send cannot stop a gallery's grouping.
    #[arg(long, env = "FACEGROUP_GROUPING_PENDING_SECS", default_value_t = 900)]
    grouping_pending_secs: u64,

    /// Key prefix of the per-image faces JSON: PREFIX{gallery_id}/{image_id}.json.
    #[arg(long, env = "FACEGROUP_RESULTS_PREFIX", default_value = "faces/")]
    results_prefix: String,

    /// Face thumbnails (aligned crop and context crop, JPEG) written per face.
    #[command(flatten)]
    thumbnails: ThumbnailConfig,

    /// Models and runtime; `--pipelines` defaults to 1 here (jobs beyond it overlap only their
    /// S3/MongoDB I/O) and `--intra-threads` to ONNX Runtime's choice.
    #[command(flatten)]
    pipeline: PipelineArgs,
}

fn main() {
    // clap exits 2 on a usage error itself, which is the contract's configuration-error code.
    let cli = Cli::parse();
    let code = facegroup_worker::run(
        "detection",
        &cli.common,
        cli.pipeline.model.provider,
        || load_pipelines(&cli),
        |pool, services| DetectionHandler {
            services: services.clone(),
            grouping_queue_url: cli.grouping_queue_url.clone(),
            group_after_faces: cli.group_after_faces,
            grouping_pending_for: std::time::Duration::from_secs(cli.grouping_pending_secs),
            results_prefix: cli.results_prefix.clone(),
            thumbnails_prefix: cli.thumbnails.prefix.clone(),
            pool: Arc::new(pool),
            known_good: std::sync::Mutex::new(None),
        },
    );
    // Exit without unwinding: an abandoned inference thread must not hold the exit up.
    std::process::exit(code);
}

/// Checks this worker's own flags and loads the models (before any network call, so a bad
/// flag or a missing model exits 2 at once).
fn load_pipelines(cli: &Cli) -> Result<PipelinePool, WorkerError> {
    if cli.group_after_faces == 0 {
        return Err(WorkerError::Config(
            "group-after-faces must be positive".into(),
        ));
    }
    if let Some(q) = &cli.grouping_queue_url {
        if !q.starts_with("http") {
            return Err(WorkerError::Config(format!(
                "grouping queue URL {q:?} is not a URL"
            )));
        }
    }
    cli.thumbnails.validate()?;
    let pipelines = cli.pipeline.pipelines.unwrap_or(1) as usize;
    info!(
        config = %cli.common.redacted(),
        grouping_queue_url = ?cli.grouping_queue_url,
        group_after_faces = cli.group_after_faces,
        results_prefix = %cli.results_prefix,
        thumbnails_prefix = %cli.thumbnails.prefix,
        models_dir = %cli.pipeline.model.models_dir.display(),
        detector = %cli.pipeline.model.detector,
        embedder = %cli.pipeline.model.embedder,
        provider = %cli.pipeline.model.provider,
        pipelines,
        "starting detection worker"
    );
    let mut cfg = cli.pipeline.pipeline_config(0);
    cfg.decode.max_bytes = usize::try_from(cli.common.max_object_bytes).unwrap_or(usize::MAX);
    PipelinePool::new(&cfg, pipelines).map_err(classify_model_error)
}

/// Start-up model errors: a missing or broken model file is configuration (exit 2); a runtime
/// library or execution provider that cannot start is the machine's (exit 3).
fn classify_model_error(e: ModelError) -> WorkerError {
    match e {
        ModelError::RuntimeLoad { .. } | ModelError::ExecutionProvider { .. } => {
            WorkerError::Runtime(e.to_string())
        }
        _ => WorkerError::Config(e.to_string()),
    }
}
