//! Real servers for the integration tests: moto (SQS, S3, Batch, IAM) and SecantusDB (the
//! MongoDB wire protocol), both installed into the repo's `.venv` by scripts/setup.sh. Each test
//! starts its own on a free port, so tests run in parallel without sharing state; a server is
//! killed when its handle drops, even when the test panics.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::paths::venv_bin;

/// The region every test client and worker uses (moto accepts any).
pub const REGION: &str = "us-east-1";
/// moto's dummy access key id and secret (any value passes while IAM is not enforced).
pub const ACCESS_KEY: &str = "testing";

/// How long a server may take to accept connections (moto imports every service first).
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long [`Server::terminate`] waits after SIGTERM before it kills.
const TERM_GRACE: Duration = Duration::from_secs(10);

/// A server process listening on `127.0.0.1:port`, killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    pub port: u16,
}

impl Server {
    /// Spawns `cmd` (output discarded) and waits until `port` accepts connections; panics,
    /// naming `what`, when the process exits first or is not ready within 60 s.
    pub fn spawn(mut cmd: Command, port: u16, what: &str) -> Self {
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

    /// `http://127.0.0.1:port`, the endpoint URL clients use.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the process gracefully (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + TERM_GRACE;
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

    fn wait_ready(&mut self, what: &str) {
        let deadline = Instant::now() + START_LIMIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{what} exited during start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "{what} not ready after {START_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// moto on a free port.
pub fn start_moto() -> Server {
    start_moto_with(&[])
}

/// moto on a free port with extra environment, e.g. `INITIAL_NO_AUTH_ACTION_COUNT` to make it
/// enforce IAM after that many calls. The program is `$MOTO_SERVER`, else
/// `<repo>/.venv/bin/moto_server`.
pub fn start_moto_with(env: &[(&str, &str)]) -> Server {
    let port = free_port();
    let program = std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| venv_bin("moto_server"));
    let mut cmd = Command::new(program);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    cmd.envs(env.iter().copied());
    Server::spawn(cmd, port, "moto_server")
}

/// SecantusDB on a free port, in memory.
pub fn start_mongo() -> Server {
    start_mongo_on(free_port(), ":memory:")
}

/// SecantusDB on `port` storing in `storage` (`:memory:`, or a directory that survives a
/// restart on the same port; then every commit is synced, as a journaled MongoDB would be).
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

/// The connection string for SecantusDB on `port` (a direct connection; a generous server
/// selection timeout so a restart in a test is waited out, not an error).
pub fn mongo_uri(port: u16) -> String {
    format!("mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=60000")
}

/// A TCP port free on 127.0.0.1 right now (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Environment of a worker process talking to these servers (dummy credentials, path-style S3).
pub fn worker_env(moto: &Server, mongo_port: u16) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", moto.endpoint()),
        ("AWS_REGION", REGION.to_string()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", ACCESS_KEY.into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("FACEGROUP_MONGODB_URI", mongo_uri(mongo_port)),
        ("FACEGROUP_S3_PATH_STYLE", "true".into()),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "exited during start-up")]
    fn a_server_that_exits_before_listening_fails_the_test() {
        Server::spawn(Command::new("true"), free_port(), "true");
    }

    #[test]
    fn moto_accepts_connections_until_stopped() {
        let mut moto = start_moto();
        let port = moto.port;
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        moto.terminate();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
