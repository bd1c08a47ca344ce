//! One worker test's world: moto and SecantusDB on free ports, SDK clients and a MongoDB client
//! on them, a bucket, a log folder, and worker processes started against all of it with the
//! short timings a test needs, and the crash matrix of the fault hooks (crash at each step,
//! rerun). The detection and grouping workers' tests both build on it, so how a worker is wired
//! to the test servers is written once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use aws_config::ConfigLoader;
use aws_sdk_s3::primitives::ByteStream;

use crate::aws::sdk_config;
use crate::paths::repo_root;
use crate::server::{mongo_uri, worker_env, Server};

/// The servers and clients of one test. Servers stop when it drops.
pub struct TestStack {
    pub moto: Server,
    pub mongo: Server,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub db: mongodb::Client,
    /// Created empty by [`TestStack::start`].
    pub bucket: String,
    /// Path prefix of this test's worker logs: `<logs>.<tag>.log`.
    pub logs: PathBuf,
}

/// Queue-worker timings (seconds) short enough that a test sees heartbeats, redeliveries and an
/// idle exit in seconds (`idle_exit` applies to a worker started with `FACEGROUP_DRAIN=true`).
#[derive(Debug, Clone, Copy)]
pub struct WorkerTiming {
    pub visibility: u32,
    pub heartbeat: u32,
    pub idle_exit: u32,
}

impl TestStack {
    /// Connects clients (from the caller's `loader`, so tests use production's HTTP client) to
    /// `moto` and `mongo` and creates the bucket `photos`. `log_dir` is usually
    /// `env!("CARGO_TARGET_TMPDIR")/<crate>-logs`; `test` names this test's logs in it.
    pub async fn start(
        loader: ConfigLoader,
        moto: Server,
        mongo: Server,
        log_dir: &Path,
        test: &str,
    ) -> Self {
        let conf = sdk_config(loader, &moto).await;
        let sqs = aws_sdk_sqs::Client::new(&conf);
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .force_path_style(true)
                .build(),
        );
        let bucket = "photos".to_string();
        s3.create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("create bucket");
        let db = mongodb::Client::with_uri_str(mongo_uri(mongo.port))
            .await
            .expect("mongo client");
        std::fs::create_dir_all(log_dir).expect("log dir");
        TestStack {
            moto,
            mongo,
            sqs,
            s3,
            db,
            bucket,
            logs: log_dir.join(test),
        }
    }

    /// Puts `bytes` at `key` in the bucket.
    pub async fn upload(&self, key: &str, bytes: Vec<u8>) {
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .expect("put object");
    }

    /// Sends `body` (a JSON value, or any text) as one message to `queue`.
    pub async fn send(&self, queue: &str, body: impl std::fmt::Display) {
        self.sqs
            .send_message()
            .queue_url(queue)
            .message_body(body.to_string())
            .send()
            .await
            .expect("send");
    }

    /// Every document of `database.collection` matching `filter`, in the server's order.
    pub async fn find(
        &self,
        database: &str,
        collection: &str,
        filter: mongodb::bson::Document,
    ) -> Vec<mongodb::bson::Document> {
        use futures::TryStreamExt;
        self.db
            .database(database)
            .collection::<mongodb::bson::Document>(collection)
            .find(filter)
            .await
            .unwrap_or_else(|e| panic!("find in {database}.{collection}: {e}"))
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("read {database}.{collection}: {e}"))
    }

    /// The JSON object at `key` in the bucket (panics when missing or not JSON).
    pub async fn json(&self, key: &str) -> serde_json::Value {
        crate::aws::s3_json(&self.s3, &self.bucket, key).await
    }

    /// The object at `key` in the bucket (panics when missing).
    pub async fn bytes(&self, key: &str) -> Vec<u8> {
        crate::aws::s3_bytes(&self.s3, &self.bucket, key).await
    }

    /// The keys under `prefix` in the bucket (the first 1000, plenty for a test).
    pub async fn keys(&self, prefix: &str) -> std::collections::BTreeSet<String> {
        let out = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
            .unwrap_or_else(|e| panic!("list {prefix}: {e:?}"));
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    }

    /// The log file of the worker tagged `tag`.
    pub fn log_path(&self, tag: &str) -> PathBuf {
        self.logs.with_extension(format!("{tag}.log"))
    }

    /// Starts worker binary `bin` on `queue` against this stack's servers and bucket, logging
    /// to [`log_path`](Self::log_path)`(tag)`, with `extra` environment last (it overrides).
    pub fn worker(
        &self,
        bin: &Path,
        tag: &str,
        queue: &str,
        timing: WorkerTiming,
        extra: &[(&str, &str)],
    ) -> Child {
        let log = std::fs::File::create(self.log_path(tag)).expect("log file");
        let mut cmd = Command::new(bin);
        cmd.current_dir(repo_root())
            .envs(worker_env(&self.moto, self.mongo.port))
            .env("FACEGROUP_QUEUE_URL", queue)
            .env("FACEGROUP_BUCKET", &self.bucket)
            .env("FACEGROUP_WAIT_TIME_SECS", "1")
            .env("FACEGROUP_RETRY_BACKOFF_SECS", "1")
            .env("FACEGROUP_VISIBILITY_SECS", timing.visibility.to_string())
            .env("FACEGROUP_HEARTBEAT_SECS", timing.heartbeat.to_string())
            .env("FACEGROUP_IDLE_EXIT_SECS", timing.idle_exit.to_string())
            .env(
                "FACEGROUP_LIVENESS_FILE",
                self.logs.with_extension(format!("{tag}.alive")),
            )
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        cmd.spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()))
    }
}

/// One run of a crash matrix ([`TestStack::crash_then_rerun`]): a worker on `queue` with `env`
/// that aborts at fault-hook `step`, or runs uninterrupted when `step` is [`REFERENCE`].
pub struct CrashRun<'a> {
    pub step: &'a str,
    pub queue: &'a str,
    pub env: Vec<(&'a str, &'a str)>,
}

/// The step name of a matrix's uninterrupted reference run.
pub const REFERENCE: &str = "none";

impl TestStack {
    /// Starts every run's worker at once (`bin`, draining, `FACEGROUP_TEST_CRASH_AT` = its step)
    /// and checks that each crashed (the reference drains, exit 0); then reruns each crashed
    /// queue with the same env, without the hook, waiting `rerun_idle_secs` (longer than the
    /// visibility timeout) for the crashed job's message to come back, until drained. Logs are
    /// tagged `crash-I` / `rerun-I`. The caller then compares each run's end state with the
    /// reference's.
    pub async fn crash_then_rerun(
        &self,
        bin: &Path,
        timing: WorkerTiming,
        runs: &[CrashRun<'_>],
        rerun_idle_secs: u32,
    ) {
        let limit = std::time::Duration::from_secs(240);
        let start = |i: usize, run: &CrashRun<'_>, tag: &str, extra: (&str, &str)| {
            let mut env = vec![("FACEGROUP_DRAIN", "true")];
            env.extend_from_slice(&run.env);
            env.push(extra);
            self.worker(bin, &format!("{tag}-{i}"), run.queue, timing, &env)
        };
        let mut crashed: Vec<Child> = runs
            .iter()
            .enumerate()
            .map(|(i, run)| {
                let hook = if run.step == REFERENCE { "" } else { run.step };
                start(i, run, "crash", ("FACEGROUP_TEST_CRASH_AT", hook))
            })
            .collect();
        for (run, child) in runs.iter().zip(crashed.iter_mut()) {
            let status = crate::wait_exit(child, limit).await;
            if run.step == REFERENCE {
                assert_eq!(status.code(), Some(0), "the reference run drained");
            } else {
                assert_ne!(
                    status.code(),
                    Some(0),
                    "{}: the hook did not fire",
                    run.step
                );
            }
        }
        let idle = rerun_idle_secs.to_string();
        let mut reruns: Vec<(&str, Child)> = runs
            .iter()
            .enumerate()
            .filter(|(_, run)| run.step != REFERENCE)
            .map(|(i, run)| {
                let child = start(i, run, "rerun", ("FACEGROUP_IDLE_EXIT_SECS", &idle));
                (run.step, child)
            })
            .collect();
        for (step, child) in reruns.iter_mut() {
            let status = crate::wait_exit(child, limit).await;
            assert_eq!(status.code(), Some(0), "{step}: the rerun drained");
        }
    }
}
