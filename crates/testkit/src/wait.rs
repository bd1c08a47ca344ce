//! Waiting for a condition another process brings about (a worker finishing a job, a queue
//! draining). Tests poll instead of sleeping a fixed time, so they are as fast as the system
//! allows and do not fail on a slow machine.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `cond` every 100 ms until it holds; panics with `what` after `limit` (a generous bound
/// against hangs, not a performance assertion).
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for `child` to exit and returns its status; kills it and panics after `limit` (a bound
/// against hangs, not a performance assertion).
pub async fn wait_exit(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
