//! The SQS consumer: one poller task, one task per job, one deleter task, one liveness timer.
//!
//! - The poller long-polls (up to 10 messages, never more than the free job slots) and stops on
//!   shutdown, on a fatal job error, or (in drain mode) once the queue has been empty for the
//!   idle time with nothing in flight. The liveness file is touched by a timer, so a worker whose
//!   slots are all busy with long jobs still looks alive to the container HEALTHCHECK.
//! - Each job runs next to a heartbeat that extends its message's visibility until the job ends;
//!   the outcome decides the message's fate by [`ErrorClass`]: success and permanent failures
//!   (after the handler recorded them) are deleted, temporary failures get a short visibility so
//!   they retry with backoff (and reach the DLQ after `maxReceiveCount`), a fatal failure stops
//!   the consumer.
//! - When the heartbeat can no longer guarantee that this worker still owns the message (SQS
//!   says the receipt handle is invalid or the message is not in flight, or extensions failed
//!   for so long that the visibility may have run out), the job is cancelled where it stands:
//!   another worker may hold the message by now, and committing after it would race it. The
//!   message is neither deleted nor released.
//! - A circuit breaker (`Breaker`) keeps a dependency outage (MongoDB or S3 down for minutes)
//!   from burning receive counts: after `breaker_failures` consecutive temporary failures the
//!   poller stops receiving and the failed jobs keep their messages (the heartbeat goes on) and
//!   retry in-process with a growing backoff; the first success closes the breaker and
//!   receiving resumes. Without it every message touched during the outage would be released
//!   again and again and land in the DLQ although nothing is wrong with it.
//! - Deletes are batched (10 per call) by the deleter; entries a batch reports as failed are
//!   retried one by one, and a delete that still fails only means a redelivery, which the
//!   idempotent writes make harmless.
//! - On stop, running jobs get the grace period (SIGTERM) or nothing (fatal); whatever is still
//!   in flight then is released with visibility 0 so another worker picks it up at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::now_ms;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName,
};
use futures::FutureExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::CommonConfig;
use crate::error::{ErrorClass, JobError};
use crate::metrics::{Metrics, Unit};

/// Most messages one receive may return (an SQS limit).
const MAX_BATCH: usize = 10;
/// Longest retry delay of a temporary failure.
const MAX_BACKOFF_SECS: u64 = 900;
/// Longest pause between in-process retries of held jobs while the breaker is open.
const MAX_BREAKER_BACKOFF: Duration = Duration::from_secs(30);
/// Longest interval of the liveness timer.
const MAX_LIVENESS_INTERVAL: Duration = Duration::from_secs(10);

/// A received message.
#[derive(Debug, Clone)]
pub struct Message {
    pub message_id: String,
    pub body: String,
    /// How often SQS has handed this message out, this time included.
    pub receive_count: u32,
    /// When the message was sent (ms since the epoch), for the queue-wait metric.
    pub sent_at_ms: Option<u64>,
    receipt_handle: String,
    /// When this worker received it: the visibility set by the receive runs from here.
    received: Instant,
}

/// What a successful job did, for the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobReport {
    pub images: u64,
    pub faces: u64,
}

/// A job type: turns a message into work.
pub trait Handler: Send + Sync + 'static {
    /// Runs the job of one message.
    fn handle(&self, msg: &Message) -> impl Future<Output = Result<JobReport, JobError>> + Send;

    /// Records a permanent failure (e.g. marks the image failed) before the message is deleted.
    /// An error here keeps the message, so the failure is never lost.
    fn record_failure(
        &self,
        msg: &Message,
        err: &JobError,
    ) -> impl Future<Output = Result<(), JobError>> + Send;

    /// Runs the handler's engine on known-good input after a [`ErrorClass::Suspect`] failure:
    /// `Ok` means the runtime works (the failure was the input's), `Err` that the runtime is
    /// broken. The default has no engine to check and always passes.
    fn probe(&self) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
}

/// Why the consumer stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `--drain`: the queue stayed empty for the idle time.
    Drained,
    /// Shutdown was requested (SIGTERM/SIGINT).
    Shutdown,
    /// A job hit a GPU/runtime failure; in-flight messages were released.
    Fatal(String),
}

/// Consumer settings (a subset of [`CommonConfig`]).
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub queue_url: String,
    pub max_in_flight: usize,
    pub wait_time_secs: u32,
    pub visibility_secs: u32,
    pub heartbeat: Duration,
    pub retry_backoff_secs: u32,
    pub grace_period: Duration,
    pub drain: bool,
    pub idle_exit: Duration,
    pub liveness_file: std::path::PathBuf,
    /// Consecutive temporary failures that open the circuit breaker.
    pub breaker_failures: u32,
}

impl From<&CommonConfig> for ConsumerConfig {
    fn from(c: &CommonConfig) -> Self {
        Self {
            queue_url: c.queue_url.clone(),
            max_in_flight: c.max_in_flight,
            wait_time_secs: c.wait_time_secs,
            visibility_secs: c.visibility_secs,
            heartbeat: Duration::from_secs(c.heartbeat_secs.into()),
            retry_backoff_secs: c.retry_backoff_secs,
            grace_period: c.grace_period(),
            drain: c.drain,
            idle_exit: Duration::from_secs(c.idle_exit_secs),
            liveness_file: c.liveness_file.clone(),
            breaker_failures: c.breaker_failures,
        }
    }
}

/// State shared by the poller and the job tasks.
struct Shared<H> {
    cfg: ConsumerConfig,
    sqs: aws_sdk_sqs::Client,
    handler: H,
    metrics: Arc<Metrics>,
    /// Message id -> receipt handle of every message whose job has not settled it yet.
    in_flight: Mutex<HashMap<String, String>>,
    deletes: mpsc::UnboundedSender<(String, String)>,
    /// Cancelled on a fatal job error; the poller stops receiving at once.
    fatal: CancellationToken,
    fatal_reason: Mutex<Option<String>>,
    breaker: Breaker,
}

/// Consumes the queue until shutdown, drain or a fatal error.
pub async fn consume<H: Handler>(
    cfg: ConsumerConfig,
    sqs: aws_sdk_sqs::Client,
    handler: H,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Outcome {
    let (tx, rx) = mpsc::unbounded_channel();
    let deleter = tokio::spawn(delete_batches(sqs.clone(), cfg.queue_url.clone(), rx));
    let breaker_threshold = cfg.breaker_failures.max(1);
    let retry_base = cfg.retry_backoff_secs;
    let shared = Arc::new(Shared {
        cfg,
        sqs,
        handler,
        metrics,
        in_flight: Mutex::new(HashMap::new()),
        deletes: tx,
        fatal: CancellationToken::new(),
        fatal_reason: Mutex::new(None),
        breaker: Breaker::new(
            breaker_threshold,
            Duration::from_secs(u64::from(retry_base.max(1))),
        ),
    });

    let liveness = tokio::spawn(liveness_timer(
        shared.cfg.liveness_file.clone(),
        shared.cfg.heartbeat.min(MAX_LIVENESS_INTERVAL),
    ));
    let mut jobs = JoinSet::new();
    let drained = poll(&shared, &mut jobs, &shutdown).await;

    let outcome = if shared.fatal.is_cancelled() {
        // The runtime is broken: waiting for other jobs would only fail them too.
        jobs.abort_all();
        while jobs.join_next().await.is_some() {}
        let reason = lock(&shared.fatal_reason).clone().unwrap_or_default();
        Outcome::Fatal(reason)
    } else {
        let grace = shared.cfg.grace_period;
        let finished = tokio::time::timeout(grace, async {
            while let Some(r) = jobs.join_next().await {
                log_join(r);
            }
        })
        .await;
        if finished.is_err() {
            warn!(
                left = jobs.len(),
                grace_secs = grace.as_secs(),
                "grace period over; releasing unfinished jobs"
            );
            jobs.abort_all();
            while jobs.join_next().await.is_some() {}
        }
        if drained {
            Outcome::Drained
        } else {
            Outcome::Shutdown
        }
    };

    liveness.abort();
    let left: Vec<(String, String)> = lock(&shared.in_flight).drain().collect();
    release(&shared.sqs, &shared.cfg.queue_url, &left).await;
    // Dropping the last sender lets the deleter flush what is queued and end.
    drop(shared);
    if let Err(e) = deleter.await {
        error!(error = %e, "deleter task failed");
    }
    outcome
}

/// The poller. Returns true when it stopped because the queue drained.
async fn poll<H: Handler>(
    shared: &Arc<Shared<H>>,
    jobs: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> bool {
    let cfg = &shared.cfg;
    let slots = Arc::new(Semaphore::new(cfg.max_in_flight));
    let mut idle_since = Instant::now();
    let mut receive_failures = 0u32;
    loop {
        while let Some(r) = jobs.try_join_next() {
            log_join(r);
        }
        if !jobs.is_empty() {
            idle_since = Instant::now();
        }
        if cfg.drain && jobs.is_empty() && idle_since.elapsed() >= cfg.idle_exit {
            info!(idle_secs = cfg.idle_exit.as_secs(), "queue drained");
            return true;
        }

        // While the breaker is open, receive nothing: the held jobs probe the dependency. Only
        // when none is left to probe (e.g. their messages were lost) does one message go through.
        let mut half_open = false;
        if shared.breaker.is_open() {
            tokio::select! {
                _ = shared.breaker.closed() => {},
                _ = tokio::time::sleep(shared.breaker.backoff()) => {},
                _ = shutdown.cancelled() => return false,
                _ = shared.fatal.cancelled() => return false,
            }
            if shared.breaker.is_open() {
                if !jobs.is_empty() {
                    continue;
                }
                half_open = true;
            }
        }

        // Ask only for as many messages as there are free slots: a received message waits for
        // nobody, and its visibility clock runs from the receive.
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return false },
            _ = shutdown.cancelled() => return false,
            _ = shared.fatal.cancelled() => return false,
        };
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH && !half_open {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }

        let receive = shared
            .sqs
            .receive_message()
            .queue_url(&cfg.queue_url)
            .max_number_of_messages(permits.len() as i32)
            .wait_time_seconds(cfg.wait_time_secs as i32)
            // Set explicitly so the heartbeat knows how long the message is held.
            .visibility_timeout(cfg.visibility_secs as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send();
        // Cancelling a long poll on shutdown is safe: SQS answers as soon as it hands messages
        // out, so the window in which messages could be received and not seen is milliseconds;
        // such a message reappears after the queue's visibility timeout.
        let received = Instant::now();
        let resp = tokio::select! {
            r = receive => r,
            _ = shutdown.cancelled() => return false,
            _ = shared.fatal.cancelled() => return false,
        };
        let messages = match resp {
            Ok(out) => {
                receive_failures = 0;
                out.messages.unwrap_or_default()
            }
            Err(e) => {
                receive_failures += 1;
                let pause = Duration::from_secs(u64::from(receive_failures.min(5)));
                warn!(error = %DisplayErrorContext(&e), retry_in_secs = pause.as_secs(), "receive failed");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {},
                    _ = shutdown.cancelled() => return false,
                }
                continue;
            }
        };
        if !messages.is_empty() {
            idle_since = Instant::now();
        }
        for (m, permit) in messages.into_iter().zip(permits.drain(..)) {
            let (Some(message_id), Some(receipt_handle)) = (m.message_id, m.receipt_handle) else {
                continue;
            };
            let attrs = m.attributes.unwrap_or_default();
            let attr = |k: MessageSystemAttributeName| attrs.get(&k).map(String::as_str);
            let msg = Message {
                message_id,
                body: m.body.unwrap_or_default(),
                receive_count: attr(MessageSystemAttributeName::ApproximateReceiveCount)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1),
                sent_at_ms: attr(MessageSystemAttributeName::SentTimestamp)
                    .and_then(|v| v.parse().ok()),
                receipt_handle,
                received,
            };
            lock(&shared.in_flight).insert(msg.message_id.clone(), msg.receipt_handle.clone());
            jobs.spawn(run_job(shared.clone(), msg, permit));
        }
    }
}

/// What becomes of a job's message.
enum Settlement {
    /// Done, or failed permanently and recorded: delete it.
    Delete,
    /// Failed temporarily: make it visible again after a backoff.
    Retry,
    /// The runtime is broken: stop the consumer; the message is released with the others.
    Fatal(String),
    /// This worker may no longer own the message: forget it without touching it.
    Lost(String),
}

/// Runs one job with its heartbeat and settles its message.
async fn run_job<H: Handler>(shared: Arc<Shared<H>>, msg: Message, _slot: OwnedSemaphorePermit) {
    if let Some(sent) = msg.sent_at_ms {
        let wait = now_ms().saturating_sub(sent) as f64;
        shared
            .metrics
            .emit(&[], &[("QueueWait", wait, Unit::Milliseconds)]);
    }
    // The heartbeat ending means the message may be someone else's: the job is dropped where it
    // stands, before any further (commit) step.
    let settlement = tokio::select! {
        s = work(&shared, &msg) => s,
        lost = heartbeat(&shared, &msg) => Settlement::Lost(lost),
    };
    match settlement {
        Settlement::Delete => settle_delete(&shared, &msg),
        Settlement::Retry => retry_later(&shared, &msg).await,
        Settlement::Fatal(reason) => {
            error!(message_id = %msg.message_id, %reason, "GPU/runtime failure; stopping");
            lock(&shared.fatal_reason).get_or_insert(reason);
            shared.fatal.cancel();
            // The message stays in `in_flight` and is released with the others.
        }
        Settlement::Lost(reason) => {
            error!(message_id = %msg.message_id, %reason, "message visibility lost; job cancelled before its commit");
            shared.metrics.emit(
                &[("FailureClass", "lost")],
                &[("Failures", 1.0, Unit::Count)],
            );
            lock(&shared.in_flight).remove(&msg.message_id);
        }
    }
}

/// Runs the job (again, while the breaker holds it) and decides the message's fate.
async fn work<H: Handler>(shared: &Arc<Shared<H>>, msg: &Message) -> Settlement {
    loop {
        let started = Instant::now();
        // A panic in one job is caught here, so it cannot take the worker down; it is suspect
        // like an inference error (a bug triggered by this input, or a broken runtime).
        let job = std::panic::AssertUnwindSafe(shared.handler.handle(msg)).catch_unwind();
        let result = job.await.unwrap_or_else(|panic| {
            Err(JobError::suspect(format!(
                "job panicked: {}",
                panic_message(&panic)
            )))
        });
        let err = match result {
            Ok(report) => {
                shared.breaker.success();
                let elapsed = started.elapsed().as_secs_f64() * 1e3;
                shared.metrics.emit(
                    &[],
                    &[
                        ("ProcessingTime", elapsed, Unit::Milliseconds),
                        ("Images", report.images as f64, Unit::Count),
                        ("Faces", report.faces as f64, Unit::Count),
                    ],
                );
                debug!(message_id = %msg.message_id, ms = elapsed, "job done");
                return Settlement::Delete;
            }
            Err(err) => err,
        };
        shared.metrics.emit(
            &[("FailureClass", err.class.as_str())],
            &[("Failures", 1.0, Unit::Count)],
        );
        let reason = match classify(shared, msg, err).await {
            Ok(settlement) => return settlement,
            Err(temporary) => temporary,
        };
        if !shared.breaker.failure() {
            warn!(message_id = %msg.message_id, receive_count = msg.receive_count, %reason, "temporary failure; retrying later");
            return Settlement::Retry;
        }
        warn!(message_id = %msg.message_id, %reason, "temporary failure with the breaker open; holding the message");
        shared.breaker.wait_retry().await;
    }
}

/// Settles a failed attempt, or returns the reason of a temporary failure (the caller decides
/// between a retry later and holding the message).
async fn classify<H: Handler>(
    shared: &Arc<Shared<H>>,
    msg: &Message,
    mut err: JobError,
) -> Result<Settlement, String> {
    if err.class == ErrorClass::Suspect {
        err = match shared.handler.probe().await {
            Ok(()) => {
                warn!(message_id = %msg.message_id, reason = %err.reason, "probe passed: the input is at fault");
                JobError::permanent(err.reason)
            }
            Err(probe) => JobError::fatal(format!(
                "{}; probe on known-good input failed too: {probe}",
                err.reason
            )),
        };
    }
    match err.class {
        ErrorClass::Permanent => {
            warn!(message_id = %msg.message_id, reason = %err.reason, "permanent failure; recording and deleting");
            match shared.handler.record_failure(msg, &err).await {
                Ok(()) => {
                    // The record was written: the stores answer.
                    shared.breaker.success();
                    Ok(Settlement::Delete)
                }
                Err(e) => Err(format!("cannot record failure: {e}")),
            }
        }
        ErrorClass::Temporary => Err(err.reason),
        ErrorClass::Fatal | ErrorClass::Suspect => Ok(Settlement::Fatal(err.reason)),
    }
}

/// Hands the message to the deleter and forgets it (in one step, so a release never races a
/// delete of the same message).
fn settle_delete<H>(shared: &Shared<H>, msg: &Message) {
    crate::fault::crash_point("before_delete");
    lock(&shared.in_flight).remove(&msg.message_id);
    let _ = shared
        .deletes
        .send((msg.message_id.clone(), msg.receipt_handle.clone()));
}

/// Temporary failure: make the message visible again after an exponential backoff (or leave
/// the queue's visibility timeout to it when backoff is 0).
async fn retry_later<H>(shared: &Shared<H>, msg: &Message) {
    lock(&shared.in_flight).remove(&msg.message_id);
    let base = u64::from(shared.cfg.retry_backoff_secs);
    if base == 0 {
        return;
    }
    let delay = backoff_secs(base, msg.receive_count);
    if let Err(e) = shared
        .sqs
        .change_message_visibility()
        .queue_url(&shared.cfg.queue_url)
        .receipt_handle(&msg.receipt_handle)
        .visibility_timeout(delay as i32)
        .send()
        .await
    {
        warn!(message_id = %msg.message_id, error = %DisplayErrorContext(&e), "cannot set retry visibility");
    }
}

/// `base * 2^(receive_count-1)`, capped at 15 minutes.
pub fn backoff_secs(base: u64, receive_count: u32) -> u64 {
    let exp = receive_count.saturating_sub(1).min(16);
    base.saturating_mul(1u64 << exp).min(MAX_BACKOFF_SECS)
}

/// Extends the message's visibility every heartbeat interval until the job's `select!` drops
/// it (the job ended). Returns only when this worker can no longer be sure it owns the message:
/// SQS rejects the receipt handle, or extensions failed until the visibility set by the last
/// success could run out before the next tick.
async fn heartbeat<H>(shared: &Shared<H>, msg: &Message) -> String {
    let cfg = &shared.cfg;
    let visibility = Duration::from_secs(u64::from(cfg.visibility_secs));
    let mut held_until = msg.received + visibility;
    let mut tick = tokio::time::interval(cfg.heartbeat);
    tick.tick().await; // the first tick is immediate; the receive just set the visibility
    loop {
        tick.tick().await;
        let asked = Instant::now();
        match shared
            .sqs
            .change_message_visibility()
            .queue_url(&cfg.queue_url)
            .receipt_handle(&msg.receipt_handle)
            .visibility_timeout(cfg.visibility_secs as i32)
            .send()
            .await
        {
            Ok(_) => {
                held_until = asked + visibility;
                debug!(message_id = %msg.message_id, "visibility extended");
            }
            Err(e) => {
                use aws_sdk_sqs::error::ProvideErrorMetadata;
                let code = e.code().unwrap_or_default().to_string();
                let text = DisplayErrorContext(&e).to_string();
                let typed = e.as_service_error().is_some_and(|s| {
                    s.is_receipt_handle_is_invalid() || s.is_message_not_inflight()
                });
                if typed || ownership_lost(&code) {
                    return format!("SQS rejected the heartbeat ({code}): {text}");
                }
                warn!(message_id = %msg.message_id, error = %text, "heartbeat failed");
                if visibility_may_lapse(held_until, Instant::now(), cfg.heartbeat) {
                    return format!("heartbeats failed until the visibility could run out: {text}");
                }
            }
        }
    }
}

/// SQS error codes that mean the receipt handle no longer names a message this worker holds.
fn ownership_lost(code: &str) -> bool {
    matches!(
        code,
        "ReceiptHandleIsInvalid"
            | "AWS.SimpleQueueService.MessageNotInflight"
            | "MessageNotInflight"
            | "InvalidReceiptHandle"
    )
}

/// True when the message may become visible to others before the next heartbeat could extend
/// it (`held_until` is when the visibility of the last successful extension ends).
fn visibility_may_lapse(held_until: Instant, now: Instant, heartbeat: Duration) -> bool {
    now + heartbeat >= held_until
}

/// The circuit breaker over the dependencies (MongoDB, S3) that temporary failures come from.
///
/// Closed: a temporary failure releases its message for a retry with backoff, as usual. After
/// `threshold` consecutive temporary failures (no success in between) it opens: the poller stops
/// receiving, and failing jobs keep their messages and retry in-process, all at the same
/// moments, `backoff` apart (doubled per failed round, capped). Any success closes it.
struct Breaker {
    threshold: u32,
    base: Duration,
    state: Mutex<BreakerState>,
    /// `true` while open; the poller and held jobs wait on changes.
    open: tokio::sync::watch::Sender<bool>,
}

struct BreakerState {
    failures: u32,
    backoff: Duration,
    retry_at: Instant,
}

impl Breaker {
    fn new(threshold: u32, base: Duration) -> Self {
        Self {
            threshold,
            base,
            state: Mutex::new(BreakerState {
                failures: 0,
                backoff: base,
                retry_at: Instant::now(),
            }),
            open: tokio::sync::watch::Sender::new(false),
        }
    }

    fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// The current pause between retry rounds.
    fn backoff(&self) -> Duration {
        lock(&self.state).backoff
    }

    /// A job succeeded (or wrote its failure record): the dependencies answer.
    fn success(&self) {
        lock(&self.state).failures = 0;
        if self.open.send_replace(false) {
            info!("circuit breaker closed: dependencies answer again; receiving");
        }
    }

    /// Counts a temporary failure; returns true when the breaker is (now) open, i.e. the job
    /// must hold its message and retry in-process.
    fn failure(&self) -> bool {
        let mut s = lock(&self.state);
        s.failures = s.failures.saturating_add(1);
        let now = Instant::now();
        if self.is_open() {
            // The first failure of a retry round pushes the next round out.
            if now >= s.retry_at {
                s.backoff = (s.backoff * 2).min(MAX_BREAKER_BACKOFF);
                s.retry_at = now + s.backoff;
            }
            return true;
        }
        if s.failures < self.threshold {
            return false;
        }
        s.backoff = self.base.min(MAX_BREAKER_BACKOFF);
        s.retry_at = now + s.backoff;
        self.open.send_replace(true);
        warn!(
            failures = s.failures,
            "circuit breaker open: a dependency is failing; holding messages, not receiving"
        );
        true
    }

    /// Waits for the next retry round, or for the breaker to close.
    async fn wait_retry(&self) {
        let until = lock(&self.state).retry_at;
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => {},
            _ = self.closed() => {},
        }
    }

    /// Resolves once the breaker is closed.
    async fn closed(&self) {
        let mut rx = self.open.subscribe();
        let _ = rx.wait_for(|open| !open).await;
    }
}

/// The deleter: batches of up to 10, flushed when full or when no more arrive within 50 ms.
async fn delete_batches(
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    mut rx: mpsc::UnboundedReceiver<(String, String)>,
) {
    let mut batch: Vec<(String, String)> = Vec::with_capacity(MAX_BATCH);
    loop {
        let next = if batch.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
                Ok(item) => item,
                Err(_) => {
                    delete_batch(&sqs, &queue_url, &mut batch).await;
                    continue;
                }
            }
        };
        match next {
            Some(item) => {
                batch.push(item);
                if batch.len() == MAX_BATCH {
                    delete_batch(&sqs, &queue_url, &mut batch).await;
                }
            }
            None => {
                delete_batch(&sqs, &queue_url, &mut batch).await;
                return;
            }
        }
    }
}

async fn delete_batch(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    batch: &mut Vec<(String, String)>,
) {
    if batch.is_empty() {
        return;
    }
    // Batch entry ids are positions, which are unique within a batch by construction.
    let entries: Vec<DeleteMessageBatchRequestEntry> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, (_, receipt))| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(receipt)
                .build()
                .ok()
        })
        .collect();
    let retry: Vec<usize> = match sqs
        .delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) => out
            .failed
            .iter()
            .filter_map(|f| {
                warn!(code = %f.code, message = ?f.message, "batch delete entry failed");
                f.id.parse().ok()
            })
            .collect(),
        Err(e) => {
            warn!(error = %DisplayErrorContext(&e), "batch delete failed; deleting one by one");
            (0..batch.len()).collect()
        }
    };
    for i in retry {
        let Some((id, receipt)) = batch.get(i) else {
            continue;
        };
        if let Err(e) = sqs
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(receipt)
            .send()
            .await
        {
            // The message will be redelivered; the job's writes are idempotent.
            warn!(message_id = %id, error = %DisplayErrorContext(&e), "delete failed");
        }
    }
    batch.clear();
}

/// Makes messages visible again at once (visibility 0), 10 per call.
async fn release(sqs: &aws_sdk_sqs::Client, queue_url: &str, messages: &[(String, String)]) {
    if messages.is_empty() {
        return;
    }
    info!(count = messages.len(), "releasing in-flight messages");
    for chunk in messages.chunks(MAX_BATCH) {
        let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, (_, receipt))| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .visibility_timeout(0)
                    .build()
                    .ok()
            })
            .collect();
        match sqs
            .change_message_visibility_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                for f in out.failed {
                    warn!(code = %f.code, message = ?f.message, "release entry failed");
                }
            }
            Err(e) => warn!(error = %DisplayErrorContext(&e), "release failed"),
        }
    }
}

/// Touches the liveness file every `interval` while the consumer runs.
async fn liveness_timer(path: std::path::PathBuf, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        if let Err(e) = tokio::fs::write(&path, now_ms().to_string()).await {
            debug!(path = %path.display(), error = %e, "cannot touch liveness file");
        }
    }
}

fn log_join(r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        if e.is_panic() {
            // The message was never settled: it reappears after its visibility timeout.
            error!(error = %e, "job panicked");
        }
    }
}

/// The text of a caught panic (`panic!` with a literal or a formatted message).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking job cannot leave these maps half-updated (single inserts/removes), so a
    // poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_secs(10, 1), 10);
        assert_eq!(backoff_secs(10, 2), 20);
        assert_eq!(backoff_secs(10, 4), 80);
        assert_eq!(backoff_secs(10, 40), MAX_BACKOFF_SECS);
        assert_eq!(backoff_secs(10, 0), 10);
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_secs(1));
        assert!(!b.failure());
        assert!(!b.failure());
        b.success();
        assert!(!b.failure(), "a success resets the count");
        assert!(!b.failure());
        assert!(b.failure(), "third consecutive failure opens");
        assert!(b.is_open());
        assert!(b.failure(), "held while open");
        b.success();
        assert!(!b.is_open());
        assert!(!b.failure());
    }

    #[test]
    fn visibility_lapses_only_when_the_next_tick_may_be_too_late() {
        let now = Instant::now();
        let hb = Duration::from_secs(1);
        assert!(!visibility_may_lapse(now + Duration::from_secs(3), now, hb));
        assert!(visibility_may_lapse(
            now + Duration::from_millis(999),
            now,
            hb
        ));
        assert!(visibility_may_lapse(now, now, hb));
        assert!(ownership_lost("ReceiptHandleIsInvalid"));
        assert!(!ownership_lost("ThrottlingException"));
    }
}
