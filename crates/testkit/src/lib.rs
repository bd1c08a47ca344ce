//! The workspace's test kit: one home for what several crates' tests need, so no test helper is
//! copied between crates and none is included across crates with `#[path]`.
//!
//! - [`paths`]: the repository, models, sample photos and ONNX Runtime library that
//!   `scripts/setup.sh` installs; a missing one panics with the command that fetches it;
//!   [`heif_enc`] makes HEIC/AVIF copies of the sample photos.
//! - [`TempDir`]: a fresh folder removed on drop.
//! - [`server`]: real servers on free ports (moto for SQS/S3/Batch/IAM, SecantusDB for the
//!   MongoDB wire protocol) from the repo's `.venv`, stopped when their handle drops.
//! - [`Rng`]: a seeded generator, so synthetic data is the same on every run.
//! - `aws` feature: SDK configuration pointing at moto, SQS queue helpers; `tokio` feature:
//!   [`wait_for`] and [`HttpReceiver`] (a recording HTTP server for callback tests). Off by default so the model tests (core, cli) do not build the AWS SDK.
//! - `stack` feature: [`TestStack`], the servers, clients and bucket of a worker test, and
//!   the command that starts a worker binary against them.
//!
//! Dev-only (`publish = false`, used only as a dev-dependency). It deliberately depends on no
//! facegroup crate: a kit built on the crate under test would give that crate's tests a second
//! copy of its types. Helpers that need a crate's types (e.g. a `PipelineConfig`) live in that
//! crate's tests, built on these paths.

pub mod paths;
pub mod rng;
pub mod server;
pub mod temp;

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "tokio")]
pub mod receiver;
#[cfg(feature = "stack")]
pub mod stack;
#[cfg(feature = "tokio")]
mod wait;

#[cfg(feature = "aws")]
pub use aws::{
    create_queue, moto_loader, queue_arn, queue_counts, s3_bytes, s3_json, s3_objects, sdk_config,
};
pub use paths::{heif_enc, image_bytes, images_dir, models_dir, ort_dylib, repo_root, run_python};
#[cfg(feature = "tokio")]
pub use receiver::{HttpReceiver, Received};
pub use rng::{normalise, Rng};
pub use server::{
    free_port, mongo_uri, start_mongo, start_mongo_on, start_moto, start_moto_with, worker_env,
    Server, ACCESS_KEY, REGION,
};
#[cfg(feature = "stack")]
pub use stack::{CrashRun, TestStack, WorkerTiming, REFERENCE};
pub use temp::TempDir;
#[cfg(feature = "tokio")]
pub use wait::{wait_exit, wait_for};
