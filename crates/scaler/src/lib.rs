//! Scaling AWS Batch worker jobs from SQS queue depth.
//!
//! Every minute (an EventBridge schedule submits the scaler as a small Fargate job) the scaler
//! reads the worker queue's `ApproximateNumberOfMessages` (waiting) and
//! `ApproximateNumberOfMessagesNotVisible` (in flight), counts the worker jobs the Batch job queue
//! already holds (SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING; only jobs whose name starts with
//! the configured job name, since detection and grouping share one queue), and submits the
//! difference. The workers run with `--drain`, so every job ends by itself once the queue is
//! empty: scaling down needs no action.
//!
//! The decision is the pure function [`decide`]; [`scale_once`] wires it to SQS and Batch.

use anyhow::{Context, Result};
use aws_sdk_batch::types::JobStatus;
use serde::Serialize;

/// Batch job states that mean "this job will process (or is processing) messages".
pub const ACTIVE_STATES: [JobStatus; 5] = [
    JobStatus::Submitted,
    JobStatus::Pending,
    JobStatus::Runnable,
    JobStatus::Starting,
    JobStatus::Running,
];

/// The queue's approximate depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct QueueDepth {
    /// `ApproximateNumberOfMessages`: waiting to be received.
    pub visible: u64,
    /// `ApproximateNumberOfMessagesNotVisible`: received, being processed.
    pub in_flight: u64,
}

/// How many jobs the work calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Messages one job is expected to work through; the backlog is divided by it.
    pub messages_per_job: u64,
    /// Upper bound on active jobs (queued + running) for this worker.
    pub max_jobs: u64,
}

/// What the scaler decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Jobs the backlog calls for, at most `max_jobs`.
    pub wanted: u64,
    /// Jobs already queued or running.
    pub active: u64,
    /// Jobs to submit now.
    pub submit: u64,
}

/// Pure scaling decision.
///
/// - Nothing waiting (`visible == 0`): submit nothing. Messages in flight are held by jobs that
///   are already running; a new job could not receive them before their visibility expires.
/// - Otherwise the backlog (waiting + in flight) is divided by `messages_per_job`, rounded up,
///   capped at `max_jobs`, and the jobs already active are subtracted.
pub fn decide(depth: QueueDepth, active: u64, policy: Policy) -> Decision {
    let wanted = if depth.visible == 0 {
        0
    } else {
        let backlog = depth.visible.saturating_add(depth.in_flight);
        backlog
            .div_ceil(policy.messages_per_job.max(1))
            .min(policy.max_jobs)
    };
    Decision {
        wanted,
        active,
        submit: wanted.saturating_sub(active),
    }
}

/// Which queue feeds which Batch job.
#[derive(Debug, Clone)]
pub struct Target {
    pub queue_url: String,
    /// Batch job queue (name or ARN).
    pub job_queue: String,
    /// Batch job definition (name, name:revision or ARN).
    pub job_definition: String,
    /// Name of submitted jobs; also the prefix that identifies this worker's jobs when counting.
    pub job_name: String,
}

/// Result of one scaling round.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub queue_url: String,
    pub job_queue: String,
    pub job_name: String,
    pub depth: QueueDepth,
    pub policy: Policy,
    pub decision: Decision,
    pub dry_run: bool,
    pub submitted_job_ids: Vec<String>,
}

/// Reads the queue's approximate depth.
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<QueueDepth> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .with_context(|| format!("GetQueueAttributes on {queue_url}"))?;
    let attrs = out.attributes.unwrap_or_default();
    let get = |name: &A| -> Result<u64> {
        attrs
            .get(name)
            .map(|v| v.parse::<u64>())
            .transpose()
            .with_context(|| format!("{name} is not a number"))
            .map(|v| v.unwrap_or(0))
    };
    Ok(QueueDepth {
        visible: get(&A::ApproximateNumberOfMessages)?,
        in_flight: get(&A::ApproximateNumberOfMessagesNotVisible)?,
    })
}

/// Counts this worker's jobs (name starts with `name_prefix`) in the active states.
pub async fn active_jobs(
    batch: &aws_sdk_batch::Client,
    job_queue: &str,
    name_prefix: &str,
) -> Result<u64> {
    let mut count = 0u64;
    for status in ACTIVE_STATES {
        let mut next: Option<String> = None;
        loop {
            let out = batch
                .list_jobs()
                .job_queue(job_queue)
                .job_status(status.clone())
                .set_next_token(next.take())
                .send()
                .await
                .with_context(|| format!("ListJobs {status} on {job_queue}"))?;
            count += out
                .job_summary_list()
                .iter()
                .filter(|j| j.job_name().is_some_and(|n| n.starts_with(name_prefix)))
                .count() as u64;
            match out.next_token {
                Some(t) if !t.is_empty() => next = Some(t),
                _ => break,
            }
        }
    }
    Ok(count)
}

/// Submits `n` jobs and returns their ids.
pub async fn submit_jobs(
    batch: &aws_sdk_batch::Client,
    target: &Target,
    n: u64,
) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let out = batch
            .submit_job()
            .job_name(&target.job_name)
            .job_queue(&target.job_queue)
            .job_definition(&target.job_definition)
            .send()
            .await
            .with_context(|| format!("SubmitJob {} on {}", target.job_name, target.job_queue))?;
        ids.push(out.job_id().unwrap_or_default().to_string());
    }
    Ok(ids)
}

/// One scaling round: read, decide, submit (unless `dry_run`).
pub async fn scale_once(
    sqs: &aws_sdk_sqs::Client,
    batch: &aws_sdk_batch::Client,
    target: &Target,
    policy: Policy,
    dry_run: bool,
) -> Result<Report> {
    let depth = queue_depth(sqs, &target.queue_url).await?;
    let active = active_jobs(batch, &target.job_queue, &target.job_name).await?;
    let decision = decide(depth, active, policy);
    let submitted_job_ids = if dry_run {
        Vec::new()
    } else {
        submit_jobs(batch, target, decision.submit).await?
    };
    Ok(Report {
        queue_url: target.queue_url.clone(),
        job_queue: target.job_queue.clone(),
        job_name: target.job_name.clone(),
        depth,
        policy,
        decision,
        dry_run,
        submitted_job_ids,
    })
}

/// The SDK's default configuration loader with a rustls + ring HTTPS client (no aws-lc-sys), as
/// the workers use. Region, endpoint (`AWS_ENDPOINT_URL`) and credentials come from the
/// environment.
pub fn config_loader() -> aws_config::ConfigLoader {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        messages_per_job: 100,
        max_jobs: 32,
    };

    fn depth(visible: u64, in_flight: u64) -> QueueDepth {
        QueueDepth { visible, in_flight }
    }

    #[test]
    fn empty_queue_submits_nothing() {
        assert_eq!(
            decide(depth(0, 0), 0, POLICY),
            Decision {
                wanted: 0,
                active: 0,
                submit: 0
            }
        );
        // Only in-flight messages: the running jobs hold them.
        assert_eq!(decide(depth(0, 40), 1, POLICY).submit, 0);
        assert_eq!(decide(depth(0, 40), 0, POLICY).submit, 0);
    }

    #[test]
    fn ten_thousand_messages_are_bounded_by_max_jobs() {
        let d = decide(depth(10_000, 0), 0, POLICY);
        assert_eq!(d.wanted, 32);
        assert_eq!(d.submit, 32);
        let unbounded = Policy {
            max_jobs: 1_000,
            ..POLICY
        };
        assert_eq!(decide(depth(10_000, 0), 0, unbounded).submit, 100);
    }

    #[test]
    fn active_jobs_are_counted() {
        // 10k messages want 32 jobs; 20 already queued or running -> 12 more.
        assert_eq!(decide(depth(10_000, 0), 20, POLICY).submit, 12);
        // At (or above) the bound nothing more is submitted.
        assert_eq!(decide(depth(10_000, 0), 32, POLICY).submit, 0);
        assert_eq!(decide(depth(10_000, 0), 40, POLICY).submit, 0);
        // 250 waiting + 50 in flight = 3 jobs' worth; 1 running -> 2 more.
        assert_eq!(decide(depth(250, 50), 1, POLICY).submit, 2);
    }

    #[test]
    fn a_small_backlog_gets_one_job() {
        assert_eq!(decide(depth(1, 0), 0, POLICY).submit, 1);
        assert_eq!(decide(depth(100, 0), 0, POLICY).submit, 1);
        assert_eq!(decide(depth(101, 0), 0, POLICY).submit, 2);
        assert_eq!(decide(depth(5, 0), 1, POLICY).submit, 0);
    }

    #[test]
    fn degenerate_policy_values_are_safe() {
        let zero = Policy {
            messages_per_job: 0,
            max_jobs: 0,
        };
        assert_eq!(decide(depth(u64::MAX, u64::MAX), 0, zero).submit, 0);
        let one = Policy {
            messages_per_job: 0,
            max_jobs: 5,
        };
        assert_eq!(decide(depth(3, 0), 0, one).submit, 3);
    }
}
