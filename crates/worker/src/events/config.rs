//! Settings of the events ([`super`]): callback allow-list and signing secret, delivery timing,
//! and the optional SNS topic / EventBridge bus. Flattened into [`crate::CommonConfig`], so both
//! workers take the same `FACEGROUP_CALLBACK_*` / `FACEGROUP_EVENTS_*` variables. Defaults are
//! safe: no host is allowed (every callback is refused), no topic, no bus.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use crate::error::WorkerError;

/// A secret that neither `Debug` nor `Display` prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for signing only.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// Event delivery settings.
#[derive(Debug, Clone, Args)]
pub struct EventsConfig {
    /// Hosts a job's `callback` URL may name, comma-separated: `example.com` (that host only) or
    /// `*.example.com` (its subdomains). Empty (the default): every callback is refused.
    /// Link-local and metadata addresses are refused whatever the list says.
    #[arg(
        long,
        env = "FACEGROUP_CALLBACK_ALLOWED_HOSTS",
        value_delimiter = ',',
        num_args = 0..
    )]
    pub callback_allowed_hosts: Vec<String>,

    /// Also allow loopback addresses (127.0.0.0/8, ::1), for local receivers and tests.
    #[arg(
        long,
        env = "FACEGROUP_CALLBACK_ALLOW_LOOPBACK",
        default_value_t = false
    )]
    pub callback_allow_loopback: bool,

    /// Also allow plain `http://` callbacks (default: `https://` only).
    #[arg(long, env = "FACEGROUP_CALLBACK_ALLOW_HTTP", default_value_t = false)]
    pub callback_allow_http: bool,

    /// HMAC-SHA256 key of the `X-Facegroup-Signature` header; required when any callback host is
    /// allowed. Never printed.
    #[arg(long, env = "FACEGROUP_CALLBACK_SECRET", hide_env_values = true)]
    pub callback_secret: Option<Secret>,

    /// Timeout of one callback attempt (resolve, connect, TLS, request, response head), seconds.
    #[arg(long, env = "FACEGROUP_CALLBACK_TIMEOUT_SECS", default_value_t = 10)]
    pub callback_timeout_secs: u64,

    /// Attempts per event and target before it is marked dead.
    #[arg(long, env = "FACEGROUP_EVENTS_MAX_ATTEMPTS", default_value_t = 8)]
    pub events_max_attempts: u32,

    /// Delay before the second attempt, in milliseconds; doubled per attempt (5 s, 10 s, ...,
    /// 320 s for the default 8 attempts), capped at `events_backoff_max_secs`.
    #[arg(long, env = "FACEGROUP_EVENTS_BACKOFF_MS", default_value_t = 5_000)]
    pub events_backoff_ms: u64,

    /// Longest delay between two attempts, seconds.
    #[arg(long, env = "FACEGROUP_EVENTS_BACKOFF_MAX_SECS", default_value_t = 900)]
    pub events_backoff_max_secs: u64,

    /// How long a worker's claim on an event lasts (must exceed the callback timeout): a worker
    /// that dies mid-delivery leaves the event to another after this.
    #[arg(long, env = "FACEGROUP_EVENTS_LEASE_SECS", default_value_t = 60)]
    pub events_lease_secs: u64,

    /// Seconds between outbox polls when nothing is due (events recorded by this process wake
    /// the delivery task at once).
    #[arg(long, env = "FACEGROUP_EVENTS_POLL_SECS", default_value_t = 5)]
    pub events_poll_secs: u64,

    /// SNS topic ARN every event is also published to.
    #[arg(long, env = "FACEGROUP_EVENTS_SNS_TOPIC_ARN")]
    pub events_sns_topic_arn: Option<String>,

    /// EventBridge bus (name or ARN) every event is also put on (source `facegroup`,
    /// detail-type the event type).
    #[arg(long, env = "FACEGROUP_EVENTS_BUS_NAME")]
    pub events_bus_name: Option<String>,
}

impl EventsConfig {
    /// Rejects values delivery cannot run with.
    pub fn validate(&self) -> Result<(), WorkerError> {
        let bad = |msg: String| Err(WorkerError::Config(msg));
        for h in self.allowed_hosts() {
            let literal = h.trim_start_matches('[').trim_end_matches(']');
            if literal.parse::<std::net::IpAddr>().is_ok() {
                continue;
            }
            let name = h.strip_prefix("*.").unwrap_or(h);
            if name.is_empty() || name.contains(['/', ':', '@', '*', ' ', '[', ']']) {
                return bad(format!(
                    "callback allowed host {h:?}: expected `host` or `*.domain` (no scheme, port or path)"
                ));
            }
        }
        let secret_empty = self.callback_secret.as_ref().is_none_or(|s| s.0.is_empty());
        if self.allowed_hosts().next().is_some() && secret_empty {
            return bad(
                "callback hosts are allowed but FACEGROUP_CALLBACK_SECRET is not set".into(),
            );
        }
        if self.callback_timeout_secs == 0 {
            return bad("callback timeout must be positive".into());
        }
        if !(1..=100).contains(&self.events_max_attempts) {
            return bad(format!(
                "events max attempts {} not in 1..=100",
                self.events_max_attempts
            ));
        }
        if self.events_lease_secs <= self.callback_timeout_secs {
            return bad(format!(
                "events lease {} s must exceed the callback timeout {} s",
                self.events_lease_secs, self.callback_timeout_secs
            ));
        }
        if self.events_poll_secs == 0 {
            return bad("events poll interval must be positive".into());
        }
        if let Some(arn) = &self.events_sns_topic_arn {
            if !arn.starts_with("arn:") {
                return bad(format!("SNS topic {arn:?} is not an ARN"));
            }
        }
        if self.events_bus_name.as_deref().is_some_and(str::is_empty) {
            return bad("EventBridge bus name is empty".into());
        }
        Ok(())
    }

    /// The allow-list's entries, trimmed, blanks skipped (an empty variable allows nothing).
    pub fn allowed_hosts(&self) -> impl Iterator<Item = &str> {
        self.callback_allowed_hosts
            .iter()
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.callback_timeout_secs)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.events_lease_secs)
    }

    pub fn poll(&self) -> Duration {
        Duration::from_secs(self.events_poll_secs)
    }

    /// The delay after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(30);
        let ms = self.events_backoff_ms.saturating_mul(factor);
        Duration::from_millis(ms).min(Duration::from_secs(self.events_backoff_max_secs))
    }
}

impl fmt::Display for EventsConfig {
    /// The settings without the secret (only whether one is set).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "callback_allowed_hosts={:?} callback_allow_loopback={} callback_allow_http={} \
             callback_secret={} callback_timeout_secs={} events_max_attempts={} \
             events_backoff_ms={} events_sns_topic_arn={:?} events_bus_name={:?}",
            self.callback_allowed_hosts,
            self.callback_allow_loopback,
            self.callback_allow_http,
            if self.callback_secret.is_some() {
                "set"
            } else {
                "unset"
            },
            self.callback_timeout_secs,
            self.events_max_attempts,
            self.events_backoff_ms,
            self.events_sns_topic_arn,
            self.events_bus_name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        events: EventsConfig,
    }

    fn parse(args: &[&str]) -> EventsConfig {
        let mut all = vec!["w"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("parse").events
    }

    #[test]
    fn defaults_refuse_every_callback_and_are_valid() {
        let c = parse(&[]);
        c.validate().expect("valid");
        assert!(c.callback_allowed_hosts.is_empty());
        assert!(!c.callback_allow_loopback);
        assert_eq!(c.backoff(1), Duration::from_secs(5));
        assert_eq!(c.backoff(2), Duration::from_secs(10));
        assert_eq!(c.backoff(40), Duration::from_secs(900));
    }

    #[test]
    fn hosts_need_a_secret_and_the_secret_is_never_printed() {
        let c = parse(&["--callback-allowed-hosts", "a.example,*.b.example"]);
        assert_eq!(c.callback_allowed_hosts, ["a.example", "*.b.example"]);
        assert!(matches!(c.validate(), Err(WorkerError::Config(_))));
        let c = parse(&[
            "--callback-allowed-hosts",
            "a.example",
            "--callback-secret",
            "hunter2",
        ]);
        c.validate().expect("valid");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.to_string().contains("hunter2"));
        let c = parse(&["--callback-allowed-hosts", ""]);
        c.validate().expect("an empty list needs no secret");
        assert_eq!(c.allowed_hosts().count(), 0);
        let c = parse(&[
            "--callback-allowed-hosts",
            "10.0.0.5,[fd00::5]",
            "--callback-secret",
            "s",
        ]);
        c.validate().expect("IP literals may be listed");
        for bad in ["https://a.example", "a.example:443", "*"] {
            let c = parse(&["--callback-allowed-hosts", bad, "--callback-secret", "s"]);
            assert!(c.validate().is_err(), "{bad}");
        }
        let c = parse(&["--events-lease-secs", "10"]);
        assert!(c.validate().is_err(), "lease not over the timeout");
    }
}
