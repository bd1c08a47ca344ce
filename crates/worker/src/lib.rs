//! Shared runtime of the facegroup workers (`facegroup-detection-worker`,
//! `facegroup-grouping-worker`): typed configuration ([`config`]), the SQS consumer ([`sqs`]),
//! the S3 and MongoDB stores ([`s3`], [`mongo`]), erasure of an image's data ([`erase`]), message contracts ([`jobs`]), error classes
//! ([`error`]), events to callbacks / SNS / EventBridge through an outbox ([`events`]), CloudWatch EMF metrics ([`metrics`]), test-only fault hooks ([`fault`], feature
//! `testing`) and the process lifecycle: [`run`] is the whole `main` of both worker binaries.
//!
//! # Exit codes
//!
//! The deployment (AWS Batch / ECS) relies on these:
//!
//! | code | meaning | what to do |
//! |------|---------|------------|
//! | 0 | finished normally: drained (`--drain`) or SIGTERM handled | nothing |
//! | 1 | anything else unexpected | retry |
//! | 2 | configuration error (bad flag/env var, missing model) | do not retry |
//! | 3 | GPU/runtime failure (EP failed to load, device lost) | retry on a new instance |
//!
//! # Lifecycle
//!
//! SIGTERM or SIGINT stops receiving; running jobs get the grace period
//! (`FACEGROUP_GRACE_PERIOD_SECS`, default 25 s, under ECS's 30 s stopTimeout); unfinished
//! messages are released with visibility 0; metrics are flushed; the process exits 0.

pub mod aws;
pub mod config;
pub mod corrections;
mod entry;
pub mod erase;
pub mod error;
pub mod events;
pub mod fault;
pub mod gallery;
pub mod gpu;
pub mod jobs;
pub mod metrics;
pub mod mongo;
pub mod s3;
pub mod sqs;
pub mod summaries;
pub mod thumbs;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use config::{CommonConfig, ThumbnailConfig};
pub use entry::run;
pub use error::{
    ErrorClass, JobError, StoreError, WorkerError, EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME,
    EXIT_UNEXPECTED,
};
pub use metrics::{now_ms, Metrics};
pub use sqs::{Handler, JobReport, Message, Outcome};

/// JSON log lines on stderr (CloudWatch Logs parses them); `RUST_LOG` filters, default `info`.
/// stdout is left to the EMF metric lines.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .try_init();
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> Result<CancellationToken, WorkerError> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| WorkerError::Other(format!("cannot handle SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| WorkerError::Other(format!("cannot handle SIGINT: {e}")))?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = int.recv() => info!("SIGINT: stopping"),
        }
        t.cancel();
    });
    Ok(token)
}

/// The clients every worker needs, set up from the common configuration (cheap to clone: each
/// client is a handle on a shared connection pool).
#[derive(Clone)]
pub struct Services {
    pub sqs: aws_sdk_sqs::Client,
    pub s3: s3::S3Store,
    pub mongo: mongo::MongoStore,
    pub metrics: Arc<Metrics>,
    /// The outbox the jobs record their events in (delivered by [`events::Events::spawn_delivery`]).
    pub events: events::Events,
}

impl Services {
    /// Builds the AWS clients, connects to MongoDB and creates its indexes.
    pub async fn connect(cfg: &CommonConfig, service: &str) -> Result<Self, WorkerError> {
        let sdk = aws::sdk_config().await;
        if sdk.region().is_none() {
            return Err(WorkerError::Config(
                "no AWS region: set AWS_REGION (or a profile with one)".into(),
            ));
        }
        let sqs = aws::sqs_client(&sdk);
        let s3 = s3::S3Store::new(
            aws::s3_client(&sdk, cfg.s3_path_style),
            cfg.bucket.clone(),
            cfg.max_object_bytes,
        );
        let mongo = mongo::MongoStore::connect(&cfg.mongodb_uri)
            .await
            .map_err(|e| WorkerError::Config(format!("MongoDB URI: {e}")))?;
        mongo
            .ensure_indexes()
            .await
            .map_err(|e| WorkerError::Other(format!("creating MongoDB indexes: {e}")))?;
        let events = events::Events::new(&mongo, cfg.events.clone(), &sdk);
        events
            .ensure_indexes()
            .await
            .map_err(|e| WorkerError::Other(format!("creating MongoDB indexes: {e}")))?;
        Ok(Self {
            sqs,
            s3,
            mongo,
            events,
            metrics: Arc::new(Metrics::new(cfg.metrics_namespace.clone(), service)),
        })
    }
}

impl Services {
    /// Starts GPU utilisation/memory metrics ([`gpu`]) when the worker runs on CUDA; on the CPU
    /// there is nothing to sample.
    pub fn start_gpu_metrics(
        &self,
        provider: facegroup_core::ExecutionProvider,
        shutdown: &CancellationToken,
    ) {
        if let facegroup_core::ExecutionProvider::Cuda { device_id } = provider {
            gpu::spawn_sampler(
                self.metrics.clone(),
                u32::try_from(device_id).unwrap_or(0),
                std::time::Duration::from_secs(60),
                shutdown.clone(),
            );
        }
    }
}

/// Consumes the queue with `handler` until shutdown, drain or a fatal error, flushes metrics and
/// returns the process exit code.
pub async fn serve<H: Handler>(
    cfg: &CommonConfig,
    services: &Services,
    handler: H,
    shutdown: CancellationToken,
) -> i32 {
    let outcome = sqs::consume(
        sqs::ConsumerConfig::from(cfg),
        services.sqs.clone(),
        handler,
        services.metrics.clone(),
        shutdown,
    )
    .await;
    if matches!(outcome, Outcome::Drained) {
        // A drained worker may be the last one for a while: deliver what is due before exiting.
        services.events.flush(cfg.grace_period()).await;
    }
    let totals = services.metrics.flush();
    match outcome {
        Outcome::Drained | Outcome::Shutdown => {
            info!(?outcome, ?totals, "stopped");
            EXIT_OK
        }
        Outcome::Fatal(reason) => {
            error!(%reason, ?totals, "GPU/runtime failure; exiting for a retry on a new instance");
            EXIT_RUNTIME
        }
    }
}

/// Logs a start-up failure and returns its exit code.
pub fn startup_failure(e: &WorkerError) -> i32 {
    match e {
        WorkerError::Config(_) => error!(error = %e, "configuration error; not retrying"),
        _ => warn!(error = %e, "start-up failed"),
    }
    e.exit_code()
}
