//! The SQS consumer: one poller task, one task per job, one deleter task.
//!
//! - The poller long-polls (up to 10 messages, never more than the free job slots), touches the
//!   liveness file on every poll, and stops on shutdown, on a fatal job error, or (in drain mode)
//!   once the queue has been empty for the idle time with nothing in flight.
//! - Each job runs next to a heartbeat that extends its message's visibility until the job ends;
//!   the outcome decides the message's fate by [`ErrorClass`]: success and permanent failures
//!   (after the handler recorded them) are deleted, temporary failures get a short visibility so
//!   they retry with backoff (and reach the DLQ after `maxReceiveCount`), a fatal failure stops
//!   the consumer.
//! - Deletes are batched (10 per call) by the deleter; entries a batch reports as failed are
//!   retried one by one, and a delete that still fails only means a redelivery, which the
//!   idempotent writes make harmless.
//! - On stop, running jobs get the grace period (SIGTERM) or nothing (fatal); whatever is still
//!   in flight then is released with visibility 0 so another worker picks it up at once.

use std::collections::HashMap;
use std::convert::Infallible;
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
    let shared = Arc::new(Shared {
        cfg,
        sqs,
        handler,
        metrics,
        in_flight: Mutex::new(HashMap::new()),
        deletes: tx,
        fatal: CancellationToken::new(),
        fatal_reason: Mutex::new(None),
    });

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
        touch(&cfg.liveness_file).await;
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

        // Ask only for as many messages as there are free slots: a received message waits for
        // nobody, and its visibility clock runs from the receive.
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return false },
            _ = shutdown.cancelled() => return false,
            _ = shared.fatal.cancelled() => return false,
        };
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH {
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
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send();
        // Cancelling a long poll on shutdown is safe: SQS answers as soon as it hands messages
        // out, so the window in which messages could be received and not seen is milliseconds;
        // such a message reappears after the queue's visibility timeout.
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
            };
            lock(&shared.in_flight).insert(msg.message_id.clone(), msg.receipt_handle.clone());
            jobs.spawn(run_job(shared.clone(), msg, permit));
        }
    }
}

/// Runs one job with its heartbeat and settles its message.
async fn run_job<H: Handler>(shared: Arc<Shared<H>>, msg: Message, _slot: OwnedSemaphorePermit) {
    let started = Instant::now();
    if let Some(sent) = msg.sent_at_ms {
        let wait = now_ms().saturating_sub(sent) as f64;
        shared
            .metrics
            .emit(&[], &[("QueueWait", wait, Unit::Milliseconds)]);
    }
    // A panic in one job is caught here, so it cannot take the worker down; it is suspect like
    // an inference error (a bug triggered by this input, or a broken runtime).
    let job = std::panic::AssertUnwindSafe(shared.handler.handle(&msg)).catch_unwind();
    let result = tokio::select! {
        r = job => r.unwrap_or_else(|panic| Err(JobError::suspect(format!("job panicked: {}", panic_message(&panic))))),
        never = heartbeat(&shared, &msg) => match never {},
    };
    let elapsed = started.elapsed().as_secs_f64() * 1e3;
    match result {
        Ok(report) => {
            settle_delete(&shared, &msg);
            shared.metrics.emit(
                &[],
                &[
                    ("ProcessingTime", elapsed, Unit::Milliseconds),
                    ("Images", report.images as f64, Unit::Count),
                    ("Faces", report.faces as f64, Unit::Count),
                ],
            );
            debug!(message_id = %msg.message_id, ms = elapsed, "job done");
        }
        Err(err) => {
            shared.metrics.emit(
                &[("FailureClass", err.class.as_str())],
                &[("Failures", 1.0, Unit::Count)],
            );
            settle_failure(&shared, &msg, err).await;
        }
    }
}

async fn settle_failure<H: Handler>(shared: &Arc<Shared<H>>, msg: &Message, mut err: JobError) {
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
                Ok(()) => settle_delete(shared, msg),
                Err(e) => {
                    warn!(message_id = %msg.message_id, error = %e, "cannot record failure; will retry");
                    retry_later(shared, msg).await;
                }
            }
        }
        ErrorClass::Temporary => {
            warn!(message_id = %msg.message_id, receive_count = msg.receive_count, reason = %err.reason, "temporary failure; retrying later");
            retry_later(shared, msg).await;
        }
        ErrorClass::Fatal | ErrorClass::Suspect => {
            error!(message_id = %msg.message_id, reason = %err.reason, "GPU/runtime failure; stopping");
            let mut reason = lock(&shared.fatal_reason);
            reason.get_or_insert(err.reason);
            shared.fatal.cancel();
            // The message stays in `in_flight` and is released with the others.
        }
    }
}

/// Hands the message to the deleter and forgets it (in one step, so a release never races a
/// delete of the same message).
fn settle_delete<H>(shared: &Shared<H>, msg: &Message) {
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

/// Extends the message's visibility every heartbeat interval, forever; the job's `select!`
/// drops it when the job ends, which is what stops the extensions.
async fn heartbeat<H>(shared: &Shared<H>, msg: &Message) -> Infallible {
    let mut tick = tokio::time::interval(shared.cfg.heartbeat);
    tick.tick().await; // the first tick is immediate; the receive just set the visibility
    loop {
        tick.tick().await;
        match shared
            .sqs
            .change_message_visibility()
            .queue_url(&shared.cfg.queue_url)
            .receipt_handle(&msg.receipt_handle)
            .visibility_timeout(shared.cfg.visibility_secs as i32)
            .send()
            .await
        {
            Ok(_) => debug!(message_id = %msg.message_id, "visibility extended"),
            Err(e) => {
                warn!(message_id = %msg.message_id, error = %DisplayErrorContext(&e), "heartbeat failed")
            }
        }
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

async fn touch(path: &std::path::Path) {
    if let Err(e) = tokio::fs::write(path, now_ms().to_string()).await {
        debug!(path = %path.display(), error = %e, "cannot touch liveness file");
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
}
