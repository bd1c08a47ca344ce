//! The SQS consumer against a real SQS endpoint (moto), with handlers whose behaviour is fixed
//! so each delivery rule is seen on its own: poison messages reach the DLQ, heartbeats keep a
//! long job's message hidden, shutdown releases unfinished messages at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use facegroup_worker::sqs::{consume, ConsumerConfig};
use facegroup_worker::{Handler, JobError, JobReport, Message, Metrics, Outcome};
use tokio_util::sync::CancellationToken;

use facegroup_testkit::{
    create_queue, queue_counts, sdk_config, start_moto, wait_for, Server, TempDir,
};

fn consumer_config(queue_url: &str, dir: &TempDir) -> ConsumerConfig {
    ConsumerConfig {
        queue_url: queue_url.to_string(),
        max_in_flight: 4,
        wait_time_secs: 1,
        visibility_secs: 3,
        heartbeat: Duration::from_secs(1),
        retry_backoff_secs: 1,
        grace_period: Duration::from_secs(1),
        drain: false,
        idle_exit: Duration::from_secs(1),
        liveness_file: dir.path().join("alive"),
        breaker_failures: 3,
    }
}

/// Fails every job temporarily.
struct AlwaysTemporary(Arc<AtomicUsize>);

impl Handler for AlwaysTemporary {
    async fn handle(&self, _msg: &Message) -> Result<JobReport, JobError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(JobError::temporary("downstream unavailable"))
    }
    async fn record_failure(&self, _: &Message, _: &JobError) -> Result<(), JobError> {
        Ok(())
    }
}

/// Sleeps for a fixed time, then succeeds.
struct Slow {
    calls: Arc<AtomicUsize>,
    sleep: Duration,
}

impl Handler for Slow {
    async fn handle(&self, _msg: &Message) -> Result<JobReport, JobError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.sleep).await;
        Ok(JobReport::default())
    }
    async fn record_failure(&self, _: &Message, _: &JobError) -> Result<(), JobError> {
        Ok(())
    }
}

/// moto (kept alive by the returned handle) and an SQS client of the worker's own SDK loader.
async fn moto_sqs() -> (Server, aws_sdk_sqs::Client) {
    let moto = start_moto();
    let conf = sdk_config(facegroup_worker::aws::loader(), &moto).await;
    (moto, aws_sdk_sqs::Client::new(&conf))
}

async fn send(sqs: &aws_sdk_sqs::Client, queue: &str, body: impl Into<String>) {
    sqs.send_message()
        .queue_url(queue)
        .message_body(body)
        .send()
        .await
        .expect("send");
}

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new("test", "consumer-test"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_reaches_dlq_after_max_receive_count() {
    let (_moto, sqs) = moto_sqs().await;
    let (queue, dlq) = create_queue(&sqs, "poison", 30, Some(2)).await;
    let dlq = dlq.expect("dlq");
    send(&sqs, &queue, r#"{"poison":true}"#).await;

    let dir = TempDir::new("consumer");
    let calls = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let task = tokio::spawn(consume(
        consumer_config(&queue, &dir),
        sqs.clone(),
        AlwaysTemporary(calls.clone()),
        metrics(),
        stop.clone(),
    ));

    wait_for(
        "poison message in the DLQ",
        Duration::from_secs(60),
        || async { queue_counts(&sqs, &dlq).await.0 == 1 },
    )
    .await;
    stop.cancel();
    assert_eq!(task.await.expect("join"), Outcome::Shutdown);
    // Each delivery up to maxReceiveCount reached the handler; none after that.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(queue_counts(&sqs, &queue).await, (0, 0));
    let moved = sqs
        .receive_message()
        .queue_url(&dlq)
        .send()
        .await
        .expect("receive dlq");
    assert_eq!(moved.messages()[0].body(), Some(r#"{"poison":true}"#));
    assert!(dir.path().join("alive").exists(), "liveness file touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_a_long_job_hidden_then_it_is_deleted() {
    let (_moto, sqs) = moto_sqs().await;
    // The queue hides a message for 2 s; the job takes 5 s.
    let (queue, _) = create_queue(&sqs, "long", 2, None).await;
    send(&sqs, &queue, "{}").await;
    let dir = TempDir::new("consumer");
    let calls = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let mut cfg = consumer_config(&queue, &dir);
    cfg.grace_period = Duration::from_secs(30);
    let task = tokio::spawn(consume(
        cfg,
        sqs.clone(),
        Slow {
            calls: calls.clone(),
            sleep: Duration::from_secs(5),
        },
        metrics(),
        stop.clone(),
    ));
    wait_for("job started", Duration::from_secs(30), || async {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    wait_for("message deleted", Duration::from_secs(60), || async {
        queue_counts(&sqs, &queue).await == (0, 0)
    })
    .await;
    stop.cancel();
    assert_eq!(task.await.expect("join"), Outcome::Shutdown);
    // Without the heartbeat the message would have reappeared at 2 s and run again.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_unfinished_messages_at_once() {
    let (_moto, sqs) = moto_sqs().await;
    // A 10-minute queue visibility: only an explicit release can make them visible again soon.
    let (queue, _) = create_queue(&sqs, "release", 600, None).await;
    for i in 0..3 {
        send(&sqs, &queue, format!("{{\"n\":{i}}}")).await;
    }
    let dir = TempDir::new("consumer");
    let calls = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let task = tokio::spawn(consume(
        consumer_config(&queue, &dir),
        sqs.clone(),
        Slow {
            calls: calls.clone(),
            sleep: Duration::from_secs(3600),
        },
        metrics(),
        stop.clone(),
    ));
    wait_for(
        "all three jobs running",
        Duration::from_secs(30),
        || async { calls.load(Ordering::SeqCst) == 3 },
    )
    .await;
    assert_eq!(queue_counts(&sqs, &queue).await, (0, 3));
    stop.cancel();
    assert_eq!(task.await.expect("join"), Outcome::Shutdown);
    assert_eq!(queue_counts(&sqs, &queue).await, (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_mode_exits_when_the_queue_stays_empty() {
    let (_moto, sqs) = moto_sqs().await;
    let (queue, _) = create_queue(&sqs, "drain", 30, None).await;
    for _ in 0..12 {
        send(&sqs, &queue, "{}").await;
    }
    let dir = TempDir::new("consumer");
    let calls = Arc::new(AtomicUsize::new(0));
    let mut cfg = consumer_config(&queue, &dir);
    cfg.drain = true;
    let outcome = consume(
        cfg,
        sqs.clone(),
        Slow {
            calls: calls.clone(),
            sleep: Duration::from_millis(10),
        },
        metrics(),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome, Outcome::Drained);
    assert_eq!(calls.load(Ordering::SeqCst), 12);
    // All twelve deleted (in batches) before the consumer returned.
    assert_eq!(queue_counts(&sqs, &queue).await, (0, 0));
}

/// Fails with a GPU/runtime error on the first message, holds the others.
struct FatalOnFirst(Arc<AtomicUsize>);

impl Handler for FatalOnFirst {
    async fn handle(&self, _msg: &Message) -> Result<JobReport, JobError> {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            // Let the other jobs start first, so there is something in flight to release.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Err(JobError::fatal("CUDA error: device lost"));
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(JobReport::default())
    }
    async fn record_failure(&self, _: &Message, _: &JobError) -> Result<(), JobError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_failure_releases_every_message_and_stops() {
    let (_moto, sqs) = moto_sqs().await;
    let (queue, _) = create_queue(&sqs, "fatal", 600, None).await;
    for _ in 0..3 {
        send(&sqs, &queue, "{}").await;
    }
    let dir = TempDir::new("consumer");
    let calls = Arc::new(AtomicUsize::new(0));
    // A long grace period: a fatal error must not wait for it.
    let mut cfg = consumer_config(&queue, &dir);
    cfg.grace_period = Duration::from_secs(3600);
    let outcome = consume(
        cfg,
        sqs.clone(),
        FatalOnFirst(calls.clone()),
        metrics(),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome, Outcome::Fatal("CUDA error: device lost".into()));
    // The failing message and the held ones are all visible again at once, none deleted.
    assert_eq!(queue_counts(&sqs, &queue).await, (3, 0));
}

/// Sleeps, then "commits" (counts); a drop guard counts jobs cancelled before their commit.
struct CommitsAfterSleep {
    started: Arc<AtomicUsize>,
    committed: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
    sleep: Duration,
}

struct CountOnDrop(Arc<AtomicUsize>, bool);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Handler for CommitsAfterSleep {
    async fn handle(&self, _msg: &Message) -> Result<JobReport, JobError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let mut guard = CountOnDrop(self.cancelled.clone(), true);
        tokio::time::sleep(self.sleep).await;
        guard.1 = false;
        self.committed.fetch_add(1, Ordering::SeqCst);
        Ok(JobReport::default())
    }
    async fn record_failure(&self, _: &Message, _: &JobError) -> Result<(), JobError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_message_is_gone_is_cancelled_before_its_commit() {
    let (_moto, sqs) = moto_sqs().await;
    let (queue, _) = create_queue(&sqs, "lost", 30, None).await;
    send(&sqs, &queue, "{}").await;
    let dir = TempDir::new("consumer");
    let started = Arc::new(AtomicUsize::new(0));
    let committed = Arc::new(AtomicUsize::new(0));
    let cancelled = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    // The worker holds the message for 1 s and extends it every 3 s, so another consumer (this
    // test) can take it over in between, as after a long pause of the worker.
    let mut cfg = consumer_config(&queue, &dir);
    cfg.visibility_secs = 1;
    cfg.heartbeat = Duration::from_secs(3);
    // One slot, held by the sleeping job: the worker asks SQS for nothing more, so when the
    // message turns visible only this test's receive can take it. (With free slots the worker's
    // own long poll won that race under load and the takeover never happened.)
    cfg.max_in_flight = 1;
    let task = tokio::spawn(consume(
        cfg,
        sqs.clone(),
        CommitsAfterSleep {
            started: started.clone(),
            committed: committed.clone(),
            cancelled: cancelled.clone(),
            sleep: Duration::from_secs(3600),
        },
        metrics(),
        stop.clone(),
    ));
    wait_for("job started", Duration::from_secs(30), || async {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    // Another consumer receives the message, finishes it and deletes it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let taken = loop {
        let out = sqs
            .receive_message()
            .queue_url(&queue)
            .visibility_timeout(600)
            .send()
            .await
            .expect("receive");
        if let Some(r) = out.messages().first().and_then(|m| m.receipt_handle()) {
            break Some(r.to_string());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "message never taken over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    sqs.delete_message()
        .queue_url(&queue)
        .receipt_handle(taken.expect("receipt"))
        .send()
        .await
        .expect("delete");
    // The worker's next heartbeat is rejected: its job is dropped, never committed.
    wait_for("job cancelled", Duration::from_secs(30), || async {
        cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(committed.load(Ordering::SeqCst), 0);
    stop.cancel();
    assert_eq!(task.await.expect("join"), Outcome::Shutdown);
    assert_eq!(queue_counts(&sqs, &queue).await, (0, 0));
}

/// Fails temporarily while `down` is set (a dependency outage); records each call per body.
struct Outage {
    down: Arc<AtomicBool>,
    calls: Arc<Mutex<HashMap<String, usize>>>,
    done: Arc<AtomicUsize>,
    max_receive: Arc<AtomicUsize>,
}

impl Handler for Outage {
    async fn handle(&self, msg: &Message) -> Result<JobReport, JobError> {
        *self
            .calls
            .lock()
            .expect("calls")
            .entry(msg.body.clone())
            .or_default() += 1;
        self.max_receive
            .fetch_max(msg.receive_count as usize, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(JobError::temporary("MongoDB: connection refused"));
        }
        self.done.fetch_add(1, Ordering::SeqCst);
        Ok(JobReport::default())
    }
    async fn record_failure(&self, _: &Message, _: &JobError) -> Result<(), JobError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_holds_messages_instead_of_dead_lettering_them() {
    let (_moto, sqs) = moto_sqs().await;
    let (queue, dlq) = create_queue(&sqs, "outage", 30, Some(3)).await;
    let dlq = dlq.expect("dlq");
    for i in 0..4 {
        sqs.send_message()
            .queue_url(&queue)
            .message_body(format!("{{\"n\":{i}}}"))
            .send()
            .await
            .expect("send");
    }
    let dir = TempDir::new("consumer");
    let handler = Outage {
        down: Arc::new(AtomicBool::new(true)),
        calls: Arc::new(Mutex::new(HashMap::new())),
        done: Arc::new(AtomicUsize::new(0)),
        max_receive: Arc::new(AtomicUsize::new(0)),
    };
    let (down, calls, done, max_receive) = (
        handler.down.clone(),
        handler.calls.clone(),
        handler.done.clone(),
        handler.max_receive.clone(),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(consume(
        consumer_config(&queue, &dir),
        sqs.clone(),
        handler,
        metrics(),
        stop.clone(),
    ));
    // Released on every failure, no message could be tried more than maxReceiveCount (3) times
    // before the DLQ; held by the open breaker, some are retried more often in-process.
    wait_for(
        "a held message retried past maxReceiveCount",
        Duration::from_secs(60),
        || async { calls.lock().expect("calls").values().any(|&n| n > 3) },
    )
    .await;
    assert_eq!(queue_counts(&sqs, &dlq).await, (0, 0));
    down.store(false, Ordering::SeqCst);
    wait_for("every message done", Duration::from_secs(60), || async {
        done.load(Ordering::SeqCst) == 4
    })
    .await;
    wait_for("queue empty", Duration::from_secs(30), || async {
        queue_counts(&sqs, &queue).await == (0, 0)
    })
    .await;
    stop.cancel();
    assert_eq!(task.await.expect("join"), Outcome::Shutdown);
    assert_eq!(queue_counts(&sqs, &dlq).await, (0, 0));
    assert!(
        max_receive.load(Ordering::SeqCst) <= 3,
        "a message was received past maxReceiveCount"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_file_is_touched_while_every_slot_is_busy() {
    let (_moto, sqs) = moto_sqs().await;
    let (queue, _) = create_queue(&sqs, "busy", 30, None).await;
    send(&sqs, &queue, "{}").await;
    let dir = TempDir::new("consumer");
    let calls = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let mut cfg = consumer_config(&queue, &dir);
    cfg.max_in_flight = 1;
    let alive = cfg.liveness_file.clone();
    let task = tokio::spawn(consume(
        cfg,
        sqs.clone(),
        Slow {
            calls: calls.clone(),
            sleep: Duration::from_secs(3600),
        },
        metrics(),
        stop.clone(),
    ));
    wait_for("the only slot busy", Duration::from_secs(30), || async {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let stamp = || std::fs::read_to_string(&alive).unwrap_or_default();
    let first = stamp();
    wait_for(
        "liveness touched again with the slot busy",
        Duration::from_secs(30),
        || async { !stamp().is_empty() && stamp() != first },
    )
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "still the same job");
    stop.cancel();
    assert_eq!(task.await.expect("join"), Outcome::Shutdown);
}
