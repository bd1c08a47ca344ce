//! Real servers for the integration tests: moto (SQS + S3) and SecantusDB (MongoDB wire
//! protocol), installed into the repo's `.venv` by scripts/setup.sh. Each test starts its own on
//! free ports; they are killed when the handle drops. Also shared by the detection-worker tests
//! (included with `#[path]`).
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;

pub const REGION: &str = "us-east-1";

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

fn venv_bin(name: &str) -> PathBuf {
    let p = repo_root().join(".venv/bin").join(name);
    assert!(
        p.exists(),
        "{} missing: run scripts/setup.sh (installs moto[server] and SecantusDB)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A server process, killed on drop.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
}

impl Server {
    fn spawn(mut cmd: Command, port: u16, what: &str) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let mut server = Server {
            child: Some(child),
            port,
        };
        server.wait_ready(what);
        server
    }

    fn wait_ready(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{what} exited during start-up: {status}");
            }
            assert!(Instant::now() < deadline, "{what} not ready after 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the process gracefully (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn start_moto() -> Server {
    let port = free_port();
    let mut cmd = Command::new(venv_bin("moto_server"));
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    Server::spawn(cmd, port, "moto_server")
}

/// SecantusDB on `port` storing in `storage` (`:memory:` or a directory that survives a
/// restart; then every commit is synced, as a journaled MongoDB would be).
pub fn start_mongo_on(port: u16, storage: &str) -> Server {
    let mut cmd = Command::new(venv_bin("secantusd-py"));
    cmd.args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--storage-path",
        storage,
        "--log-level",
        "WARNING",
    ]);
    if storage != ":memory:" {
        cmd.arg("--sync-on-commit");
    }
    Server::spawn(cmd, port, "secantusd-py")
}

pub fn start_mongo() -> Server {
    start_mongo_on(free_port(), ":memory:")
}

pub fn mongo_uri(port: u16) -> String {
    format!("mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=60000")
}

pub fn endpoint(moto: &Server) -> String {
    format!("http://127.0.0.1:{}", moto.port)
}

/// SDK configuration pointing at moto with dummy credentials.
pub async fn sdk(moto: &Server) -> aws_config::SdkConfig {
    facegroup_worker::aws::loader()
        .endpoint_url(endpoint(moto))
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .load()
        .await
}

/// Environment of a worker process talking to these servers.
pub fn worker_env(moto: &Server, mongo_port: u16) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint(moto)),
        ("AWS_REGION", REGION.to_string()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("FACEGROUP_MONGODB_URI", mongo_uri(mongo_port)),
        ("FACEGROUP_S3_PATH_STYLE", "true".into()),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Creates a queue (and its DLQ when `max_receive_count` is set); returns (queue, dlq) URLs.
pub async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_secs: u32,
    max_receive_count: Option<u32>,
) -> (String, Option<String>) {
    let mut dlq_url = None;
    let mut create = sqs.create_queue().queue_name(name).attributes(
        QueueAttributeName::VisibilityTimeout,
        visibility_secs.to_string(),
    );
    if let Some(max) = max_receive_count {
        let dlq = sqs
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .send()
            .await
            .expect("create dlq");
        let url = dlq.queue_url().expect("dlq url").to_string();
        let arn = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("dlq arn")
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .expect("arn");
        create = create.attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{max}"}}"#),
        );
        dlq_url = Some(url);
    }
    let out = create.send().await.expect("create queue");
    (out.queue_url().expect("queue url").to_string(), dlq_url)
}

/// (visible, in flight) message counts.
pub async fn queue_counts(sqs: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let get = |k: QueueAttributeName| {
        out.attributes()
            .and_then(|a| a.get(&k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// Polls `cond` every 100 ms until it holds; panics with `what` after `limit` (a generous bound
/// against hangs, not a performance assertion).
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// moto with IAM enforcement: the first `no_auth_actions` requests (the test's set-up) are
/// allowed as anyone; every later one must be signed by a moto IAM user whose policies allow it.
pub fn start_moto_enforcing_iam(no_auth_actions: u32) -> Server {
    let port = free_port();
    let mut cmd = Command::new(venv_bin("moto_server"));
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", no_auth_actions.to_string());
    Server::spawn(cmd, port, "moto_server")
}
