//! Typed configuration shared by the workers: every field is a flag with an environment variable
//! (`FACEGROUP_*`), a documented default, and is validated once at start so that a bad value is a
//! configuration error (exit code 2) instead of a failure on the first message.
//!
//! AWS settings are deliberately *not* duplicated here: the SDK reads `AWS_REGION`,
//! `AWS_ENDPOINT_URL` (LocalStack/moto) and the credential chain itself.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::error::WorkerError;

/// Settings of the SQS consumer, the stores and the process lifecycle.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// URL of the SQS queue this worker consumes.
    #[arg(long, env = "FACEGROUP_QUEUE_URL")]
    pub queue_url: String,

    /// S3 bucket for results (per-image faces JSON, group runs).
    #[arg(long, env = "FACEGROUP_BUCKET")]
    pub bucket: String,

    /// MongoDB connection string (printed with the password redacted; `--help` never shows
    /// its value).
    #[arg(long, env = "FACEGROUP_MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: String,

    /// Jobs processed at the same time; receives ask for no more than the free slots.
    #[arg(long, env = "FACEGROUP_MAX_IN_FLIGHT", default_value_t = 4)]
    pub max_in_flight: usize,

    /// SQS long-poll wait in seconds (0-20). 20 keeps empty receives (and their cost) rare.
    #[arg(long, env = "FACEGROUP_WAIT_TIME_SECS", default_value_t = 20)]
    pub wait_time_secs: u32,

    /// Visibility a heartbeat gives a running job's message, in seconds. A crashed worker's
    /// message reappears at most this long after the last heartbeat.
    #[arg(long, env = "FACEGROUP_VISIBILITY_SECS", default_value_t = 300)]
    pub visibility_secs: u32,

    /// Seconds between heartbeats (must be well under the visibility above).
    #[arg(long, env = "FACEGROUP_HEARTBEAT_SECS", default_value_t = 60)]
    pub heartbeat_secs: u32,

    /// First retry delay of a temporary failure, in seconds; doubled per receive, capped at
    /// 15 minutes. 0 leaves the message to reappear after the queue's own visibility timeout.
    #[arg(long, env = "FACEGROUP_RETRY_BACKOFF_SECS", default_value_t = 10)]
    pub retry_backoff_secs: u32,

    /// Seconds running jobs get to finish after SIGTERM; the rest are released (visibility 0).
    /// The default stays under ECS's 30 s stopTimeout.
    #[arg(long, env = "FACEGROUP_GRACE_PERIOD_SECS", default_value_t = 25)]
    pub grace_period_secs: u64,

    /// Exit 0 once the queue has been empty (and nothing in flight) for `idle_exit_secs`.
    #[arg(long, env = "FACEGROUP_DRAIN", default_value_t = false)]
    pub drain: bool,

    /// Idle time before `--drain` exits, in seconds.
    #[arg(long, env = "FACEGROUP_IDLE_EXIT_SECS", default_value_t = 60)]
    pub idle_exit_secs: u64,

    /// File touched on every poll, for a Docker HEALTHCHECK (`find FILE -mmin -2`).
    #[arg(
        long,
        env = "FACEGROUP_LIVENESS_FILE",
        default_value = "/tmp/facegroup-worker.alive"
    )]
    pub liveness_file: PathBuf,

    /// Largest S3 object read, in bytes; bigger images are a permanent failure.
    #[arg(long, env = "FACEGROUP_MAX_OBJECT_BYTES", default_value_t = 50 * 1024 * 1024)]
    pub max_object_bytes: u64,

    /// Address S3 as `endpoint/bucket/key` (needed by moto and LocalStack endpoints).
    #[arg(long, env = "FACEGROUP_S3_PATH_STYLE", default_value_t = false)]
    pub s3_path_style: bool,

    /// Consecutive temporary failures (MongoDB/S3 trouble) that open the consumer's circuit
    /// breaker: it stops receiving and holds the failing messages (heartbeat going) instead of
    /// releasing them into the DLQ during an outage.
    #[arg(long, env = "FACEGROUP_BREAKER_FAILURES", default_value_t = 3)]
    pub breaker_failures: u32,

    /// CloudWatch metric namespace of the Embedded Metric Format lines.
    #[arg(long, env = "FACEGROUP_METRICS_NAMESPACE", default_value = "facegroup")]
    pub metrics_namespace: String,

    /// Callbacks, SNS and EventBridge events ([`crate::events`]).
    #[command(flatten)]
    pub events: crate::events::EventsConfig,
}

/// Where face thumbnails go (`facegroup_worker::thumbs`): the detection worker writes them,
/// the grouping worker names the representatives' and erases them in deletion jobs, so both
/// take this flag with the same default.
#[derive(Debug, Clone, Args)]
pub struct ThumbnailConfig {
    /// Key prefix of the face thumbnails:
    /// PREFIX{gallery_id}/{image_id}/{model_version}/{face_index}.{aligned,context}.jpg.
    #[arg(
        long = "thumbnails-prefix",
        env = "FACEGROUP_THUMBNAILS_PREFIX",
        default_value = crate::thumbs::DEFAULT_PREFIX
    )]
    pub prefix: String,
}

impl ThumbnailConfig {
    /// The prefix must be a relative folder (end in `/`): deletions erase whole folders under
    /// it, which must hold thumbnails only.
    pub fn validate(&self) -> Result<(), WorkerError> {
        if self.prefix.is_empty() || !self.prefix.ends_with('/') || self.prefix.starts_with('/') {
            return Err(WorkerError::Config(format!(
                "thumbnails prefix {:?} must be a relative folder ending in '/'",
                self.prefix
            )));
        }
        Ok(())
    }
}

impl CommonConfig {
    /// Rejects values the worker cannot run with.
    pub fn validate(&self) -> Result<(), WorkerError> {
        let bad = |msg: String| Err(WorkerError::Config(msg));
        if !(self.queue_url.starts_with("http://") || self.queue_url.starts_with("https://")) {
            return bad(format!(
                "queue URL {:?} is not an http(s) URL",
                self.queue_url
            ));
        }
        if self.bucket.trim().is_empty() {
            return bad("bucket is empty".into());
        }
        if !(self.mongodb_uri.starts_with("mongodb://")
            || self.mongodb_uri.starts_with("mongodb+srv://"))
        {
            return bad("MongoDB URI must start with mongodb:// or mongodb+srv://".into());
        }
        if !(1..=1000).contains(&self.max_in_flight) {
            return bad(format!(
                "max in flight {} not in 1..=1000",
                self.max_in_flight
            ));
        }
        if self.wait_time_secs > 20 {
            return bad(format!(
                "wait time {} s over SQS's 20 s",
                self.wait_time_secs
            ));
        }
        if self.visibility_secs == 0 || self.visibility_secs > 43_200 {
            return bad(format!(
                "visibility {} s not in 1..=43200",
                self.visibility_secs
            ));
        }
        if self.heartbeat_secs == 0 || self.heartbeat_secs >= self.visibility_secs {
            return bad(format!(
                "heartbeat {} s must be positive and under the visibility {} s",
                self.heartbeat_secs, self.visibility_secs
            ));
        }
        if self.grace_period_secs == 0 {
            return bad("grace period must be positive".into());
        }
        if self.breaker_failures == 0 {
            return bad("breaker failures must be positive".into());
        }
        if self.max_object_bytes == 0 {
            return bad("max object bytes must be positive".into());
        }
        self.events.validate()
    }

    pub fn grace_period(&self) -> Duration {
        Duration::from_secs(self.grace_period_secs)
    }

    /// A printable view with secrets redacted.
    pub fn redacted(&self) -> Redacted<'_> {
        Redacted(self)
    }
}

/// `Display`s a [`CommonConfig`] with the MongoDB password hidden.
pub struct Redacted<'a>(&'a CommonConfig);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        write!(
            f,
            "queue_url={} bucket={} mongodb_uri={} max_in_flight={} wait_time_secs={} \
             visibility_secs={} heartbeat_secs={} retry_backoff_secs={} grace_period_secs={} \
             drain={} idle_exit_secs={} liveness_file={} max_object_bytes={} s3_path_style={} \
             breaker_failures={} {}",
            c.queue_url,
            c.bucket,
            redact_uri(&c.mongodb_uri),
            c.max_in_flight,
            c.wait_time_secs,
            c.visibility_secs,
            c.heartbeat_secs,
            c.retry_backoff_secs,
            c.grace_period_secs,
            c.drain,
            c.idle_exit_secs,
            c.liveness_file.display(),
            c.max_object_bytes,
            c.s3_path_style,
            c.breaker_failures,
            c.events
        )
    }
}

/// Replaces the password of `scheme://user:password@host` (and any `password=`-like query
/// parameter) with `***`.
pub fn redact_uri(uri: &str) -> String {
    let (scheme, rest) = match uri.split_once("://") {
        Some(parts) => parts,
        None => return "***".into(),
    };
    let (authority_end, _) = rest
        .char_indices()
        .find(|&(_, c)| c == '/' || c == '?')
        .unwrap_or((rest.len(), ' '));
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.contains("token")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonConfig,
    }

    fn parse(extra: &[&str]) -> CommonConfig {
        let mut args = vec![
            "w",
            "--queue-url",
            "http://localhost:5000/123/q",
            "--bucket",
            "b",
            "--mongodb-uri",
            "mongodb://u:pw@h:27017/?authSource=admin",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).expect("parse").common
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = parse(&[]);
        c.validate().expect("defaults valid");
        assert_eq!(c.grace_period_secs, 25);
        assert_eq!(c.wait_time_secs, 20);
        assert!(!c.drain);
    }

    #[test]
    fn bad_values_are_config_errors() {
        type Break = fn(&mut CommonConfig);
        let cases: [(&str, Break); 6] = [
            ("wait over 20 s", |c| c.wait_time_secs = 21),
            ("heartbeat >= visibility", |c| {
                c.heartbeat_secs = c.visibility_secs
            }),
            ("no job slots", |c| c.max_in_flight = 0),
            ("queue URL not a URL", |c| c.queue_url = "q".into()),
            ("URI not mongodb", |c| c.mongodb_uri = "localhost".into()),
            ("no grace", |c| c.grace_period_secs = 0),
        ];
        for (what, breaks) in cases {
            let mut c = parse(&[]);
            breaks(&mut c);
            let err = c.validate().expect_err(what);
            assert!(matches!(err, WorkerError::Config(_)), "{what}: {err}");
        }
        assert!(parse(&["--wait-time-secs", "0"]).validate().is_ok());
    }

    #[test]
    fn password_never_printed() {
        let c = parse(&[]);
        let printed = c.redacted().to_string();
        assert!(!printed.contains("pw"), "{printed}");
        assert!(printed.contains("mongodb://u:***@h:27017/?authSource=admin"));
        assert_eq!(
            redact_uri("mongodb://h/?x=1&password=abc"),
            "mongodb://h/?x=1&password=***"
        );
        assert_eq!(redact_uri("mongodb://h:1"), "mongodb://h:1");
    }
}
