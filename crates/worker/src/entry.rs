//! The one entry point of both worker binaries: logging, the configuration check, the async
//! runtime, signals, the services, GPU metrics, event delivery, the consumer and the exit code. A binary only
//! parses its flags, checks its own settings in `prepare` (before any network or runtime
//! start, so a bad flag or a missing model exits 2 at once) and builds its handler in `start`.

use facegroup_core::ExecutionProvider;

use crate::config::CommonConfig;
use crate::error::WorkerError;
use crate::sqs::Handler;
use crate::{init_tracing, serve, shutdown_on_signals, Services};

/// Runs a worker to the end and returns its process exit code (see the crate docs).
///
/// `service` names the worker in metrics and logs; `provider` says whether GPU metrics are
/// sampled; `prepare` runs first, synchronously (load models, check flags); `start` turns its
/// result and the connected services into the job handler.
pub fn run<P, H: Handler>(
    service: &'static str,
    common: &CommonConfig,
    provider: ExecutionProvider,
    prepare: impl FnOnce() -> Result<P, WorkerError>,
    start: impl FnOnce(P, &Services) -> H,
) -> i32 {
    init_tracing();
    match run_inner(service, common, provider, prepare, start) {
        Ok(code) => code,
        Err(e) => crate::startup_failure(&e),
    }
}

fn run_inner<P, H: Handler>(
    service: &'static str,
    common: &CommonConfig,
    provider: ExecutionProvider,
    prepare: impl FnOnce() -> Result<P, WorkerError>,
    start: impl FnOnce(P, &Services) -> H,
) -> Result<i32, WorkerError> {
    common.validate()?;
    let prepared = prepare()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| WorkerError::Other(format!("starting the async runtime: {e}")))?;
    let code = rt.block_on(async {
        let shutdown = shutdown_on_signals()?;
        let services = Services::connect(common, service).await?;
        services.start_gpu_metrics(provider, &shutdown);
        services.events.spawn_delivery(shutdown.clone());
        let handler = start(prepared, &services);
        Ok::<_, WorkerError>(serve(common, &services, handler, shutdown).await)
    });
    // Not a plain drop: dropping the runtime waits for blocking tasks, and an inference call
    // abandoned by a fatal error or the grace period must not hold the exit up.
    rt.shutdown_background();
    code
}
