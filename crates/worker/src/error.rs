//! Error classes. Every failure of a job is sorted into one of three classes because each asks
//! for a different action on the SQS message (see [`ErrorClass`]); process-level failures map to
//! the exit-code contract (see [`WorkerError::exit_code`]).

use std::fmt;

/// Exit code: finished normally (drained, or SIGTERM handled).
pub const EXIT_OK: i32 = 0;
/// Exit code: anything unexpected.
pub const EXIT_UNEXPECTED: i32 = 1;
/// Exit code: configuration error; retrying the same job definition cannot help.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code: GPU or inference-runtime failure; retry on a new instance.
pub const EXIT_RUNTIME: i32 = 3;

/// What a failed job means for its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// S3/MongoDB/network trouble, throttling: keep the message, retry later (DLQ after
    /// `maxReceiveCount`).
    Temporary,
    /// Bad input (corrupt image, missing object, invalid message): record the failure, delete.
    Permanent,
    /// The GPU or inference runtime is broken: release every in-flight message and exit 3.
    Fatal,
    /// The job failed in a way that is either this input's fault or the runtime's (an inference
    /// error on this image, a panic in this job). The consumer runs the handler's
    /// [`probe`](crate::Handler::probe) on known-good input to tell them apart: the probe passes ->
    /// [`Permanent`](Self::Permanent) for this input; it fails -> [`Fatal`](Self::Fatal). Without
    /// the probe one poison image would kill every instance that receives it, up to
    /// `maxReceiveCount` times.
    Suspect,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Temporary => "temporary",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Fatal => "fatal",
            ErrorClass::Suspect => "suspect",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's failure: its class and a reason that is safe to store on the image.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{class} failure: {reason}")]
pub struct JobError {
    pub class: ErrorClass,
    pub reason: String,
}

impl JobError {
    pub fn temporary(reason: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Temporary,
            reason: reason.into(),
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Permanent,
            reason: reason.into(),
        }
    }

    pub fn fatal(reason: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Fatal,
            reason: reason.into(),
        }
    }

    /// See [`ErrorClass::Suspect`].
    pub fn suspect(reason: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Suspect,
            reason: reason.into(),
        }
    }
}

/// Failure of the S3 or MongoDB store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("s3://{bucket}/{key} does not exist")]
    NotFound { bucket: String, key: String },
    /// S3 answered 403: this worker's role may not read the object. Without `s3:ListBucket` S3
    /// also answers a missing key this way, so the two cannot be told apart; either way the
    /// same request can never succeed by retrying it.
    #[error(
        "s3://{bucket}/{key}: access denied (the worker's role cannot read this object, or it \
         does not exist and the role may not list the bucket)"
    )]
    Denied { bucket: String, key: String },
    #[error("s3://{bucket}/{key} is {size} bytes, over the limit of {max}")]
    TooLarge {
        bucket: String,
        key: String,
        size: u64,
        max: u64,
    },
    #[error("S3: {0}")]
    S3(String),
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("stored document is malformed: {0}")]
    Malformed(String),
}

impl From<StoreError> for JobError {
    /// A missing, unreadable (403) or oversized object is the caller's bad input, and a
    /// malformed stored document cannot become valid by retrying; everything else is the
    /// store's (temporary) trouble, which the consumer's circuit breaker waits out.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. }
            | StoreError::Denied { .. }
            | StoreError::TooLarge { .. }
            | StoreError::Malformed(_) => JobError::permanent(e.to_string()),
            _ => JobError::temporary(e.to_string()),
        }
    }
}

/// Failure of the worker process as a whole.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("configuration error: {0}")]
    Config(String),
    #[error("GPU/runtime failure: {0}")]
    Runtime(String),
    #[error("{0}")]
    Other(String),
}

impl WorkerError {
    /// The process exit code of the contract in the crate docs.
    pub fn exit_code(&self) -> i32 {
        match self {
            WorkerError::Config(_) => EXIT_CONFIG,
            WorkerError::Runtime(_) => EXIT_RUNTIME,
            WorkerError::Other(_) => EXIT_UNEXPECTED,
        }
    }
}
