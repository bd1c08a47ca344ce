//! Test-only fault hooks, compiled in only with the `testing` feature (the workers' integration
//! tests enable it through a dev-dependency; release builds have none of it and read none of
//! these variables). Without the feature every hook is a constant no-op.
//!
//! - `FACEGROUP_TEST_CRASH_AT=STEP`: [`crash_point`] aborts the process at the named step (before
//!   or after a MongoDB/S3 write, before the delete), so a test can check that a rerun ends in
//!   exactly the state of an uninterrupted run, without timing a SIGKILL.
//! - `FACEGROUP_TEST_FAULT=NAME`: [`forced`] is true for that named fault.
//! - `FACEGROUP_TEST_FAIL_INFERENCE=ID`: [`inference_fails`] is true for that input only (a
//!   poison image: inference fails on it, the runtime is fine).
//! - `FACEGROUP_TEST_BREAK_RUNTIME=ID`: [`runtime_broken`] turns true once that input is seen,
//!   for every later inference and probe (a GPU lost mid-job).
//! - `FACEGROUP_TEST_PAUSE_AT=STEP` with `FACEGROUP_TEST_PAUSE_DIR=DIR`: [`pause_point`] stops
//!   the job at the named step: it creates `DIR/STEP.reached` and waits until `DIR/STEP.go`
//!   exists, so a test can run something else at exactly that point of a job (a deletion
//!   racing a detection) without relying on timing.

/// True when `FACEGROUP_TEST_FAULT` names `fault` (e.g. `grouping-runtime`: the grouping
/// worker's kNN step and probe fail as on a broken GPU).
#[inline]
pub fn forced(fault: &str) -> bool {
    #[cfg(feature = "testing")]
    if std::env::var("FACEGROUP_TEST_FAULT").as_deref() == Ok(fault) {
        return true;
    }
    let _ = fault;
    false
}

/// Aborts the process when `FACEGROUP_TEST_CRASH_AT` names `step`.
#[inline]
pub fn crash_point(step: &str) {
    #[cfg(feature = "testing")]
    if std::env::var("FACEGROUP_TEST_CRASH_AT").as_deref() == Ok(step) {
        eprintln!("fault hook: aborting at {step}");
        std::process::abort();
    }
    let _ = step;
}

/// Waits at `step` while a test runs something else (see the module docs).
pub async fn pause_point(step: &str) {
    #[cfg(feature = "testing")]
    if std::env::var("FACEGROUP_TEST_PAUSE_AT").as_deref() == Ok(step) {
        if let Ok(dir) = std::env::var("FACEGROUP_TEST_PAUSE_DIR") {
            let dir = std::path::PathBuf::from(dir);
            let _ = std::fs::write(dir.join(format!("{step}.reached")), b"");
            while !dir.join(format!("{step}.go")).exists() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    let _ = step;
}

/// True when inference on input `id` must fail as if the input broke it.
#[inline]
pub fn inference_fails(id: &str) -> bool {
    #[cfg(feature = "testing")]
    if std::env::var("FACEGROUP_TEST_FAIL_INFERENCE").as_deref() == Ok(id) {
        return true;
    }
    let _ = id;
    false
}

/// True once the runtime counts as broken: input `id` (when given) is the one named by
/// `FACEGROUP_TEST_BREAK_RUNTIME`, or such an input was seen before. Probes pass `None`.
#[inline]
pub fn runtime_broken(id: Option<&str>) -> bool {
    #[cfg(feature = "testing")]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        static BROKEN: AtomicBool = AtomicBool::new(false);
        if let (Some(id), Ok(target)) = (id, std::env::var("FACEGROUP_TEST_BREAK_RUNTIME")) {
            if id == target {
                BROKEN.store(true, Ordering::SeqCst);
            }
        }
        if BROKEN.load(Ordering::SeqCst) {
            return true;
        }
    }
    let _ = id;
    false
}
