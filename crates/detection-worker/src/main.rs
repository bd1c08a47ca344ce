//! `facegroup-detection-worker`: consumes detection jobs from SQS, runs the facegroup core
//! pipeline on each image read from S3, and writes faces and image status to MongoDB plus a
//! per-image faces JSON to S3. Exit codes: see the `facegroup_worker` crate docs (0 normal,
//! 1 unexpected, 2 configuration error, 3 GPU/runtime failure).

mod handler;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use facegroup_core::{ExecutionProvider, ModelError, Pipeline, PipelineConfig};
use facegroup_worker::{CommonConfig, Services, WorkerError};
use tracing::info;

use crate::handler::{Detection, PipelinePool};

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

    /// Key prefix of the per-image faces JSON: PREFIX{gallery_id}/{image_id}.json.
    #[arg(long, env = "FACEGROUP_RESULTS_PREFIX", default_value = "faces/")]
    results_prefix: String,

    /// Directory holding the model files.
    #[arg(long, env = "FACEGROUP_MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,

    /// Detector model file in the models directory.
    #[arg(
        long,
        env = "FACEGROUP_DETECTOR",
        default_value = "scrfd_500m_bnkps.onnx"
    )]
    detector: String,

    /// Embedder model file in the models directory.
    #[arg(long, env = "FACEGROUP_EMBEDDER", default_value = "w600k_mbf.onnx")]
    embedder: String,

    /// Execution provider: cpu, cuda or cuda:N.
    #[arg(long, env = "FACEGROUP_PROVIDER", default_value = "cpu")]
    provider: ExecutionProvider,

    /// Pipelines (model session pairs) run at the same time; jobs beyond that overlap only
    /// their S3/MongoDB I/O.
    #[arg(long, env = "FACEGROUP_PIPELINES", default_value_t = 1)]
    pipelines: usize,

    /// Threads ONNX Runtime uses per operator (0: one per core).
    #[arg(long, env = "FACEGROUP_INTRA_THREADS", default_value_t = 0)]
    intra_threads: usize,

    /// libonnxruntime.so to load.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_dylib_path: Option<PathBuf>,
}

fn main() {
    // clap exits 2 on a usage error itself, which is the contract's configuration-error code.
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
    // Exit without dropping the runtime: an abandoned inference thread must not hold it up.
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    cli.common.validate()?;
    if cli.pipelines == 0 || cli.group_after_faces == 0 {
        return Err(
            WorkerError::Config("pipelines and group-after-faces must be positive".into()).into(),
        );
    }
    if let Some(q) = &cli.grouping_queue_url {
        if !q.starts_with("http") {
            return Err(
                WorkerError::Config(format!("grouping queue URL {q:?} is not a URL")).into(),
            );
        }
    }
    info!(
        config = %cli.common.redacted(),
        grouping_queue_url = ?cli.grouping_queue_url,
        group_after_faces = cli.group_after_faces,
        results_prefix = %cli.results_prefix,
        models_dir = %cli.models_dir.display(),
        detector = %cli.detector,
        embedder = %cli.embedder,
        provider = %cli.provider,
        pipelines = cli.pipelines,
        "starting detection worker"
    );

    let mut pcfg = PipelineConfig::with_models(&cli.models_dir, &cli.detector, &cli.embedder);
    pcfg.runtime.provider = cli.provider;
    pcfg.runtime.intra_threads = cli.intra_threads;
    pcfg.runtime.dylib_path = cli.ort_dylib_path.clone();
    pcfg.decode.max_bytes = cli.common.max_object_bytes as usize;
    let pipelines = (0..cli.pipelines)
        .map(|_| Pipeline::new(&pcfg).map_err(classify_model_error))
        .collect::<Result<Vec<_>, _>>()?;
    let model_version = pipelines
        .first()
        .map(|p| p.model_id().to_string())
        .unwrap_or_default();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let shutdown = facegroup_worker::shutdown_on_signals()?;
        let services = Services::connect(&cli.common, "detection").await?;
        services.start_gpu_metrics(cli.provider, &shutdown);
        let handler = Detection {
            s3: services.s3.clone(),
            mongo: services.mongo.clone(),
            sqs: services.sqs.clone(),
            grouping_queue_url: cli.grouping_queue_url.clone(),
            group_after_faces: cli.group_after_faces,
            results_prefix: cli.results_prefix.clone(),
            model_version,
            pool: Arc::new(PipelinePool::new(pipelines)),
        };
        Ok(facegroup_worker::serve(&cli.common, &services, handler, shutdown).await)
    })
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
