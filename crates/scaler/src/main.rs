//! `facegroup-scaler`: one scaling round for one worker queue (see the library docs).
//!
//! Exit status: 0 done (the decision is printed as one JSON line), 2 usage/configuration error,
//! 1 an AWS call failed.

use clap::Parser;
use facegroup_scaler::{config_loader, scale_once, Policy, Target};

#[derive(Debug, Parser)]
#[command(name = "facegroup-scaler", version, about)]
struct Args {
    /// SQS queue the workers consume.
    #[arg(long, env = "FACEGROUP_QUEUE_URL")]
    queue_url: String,
    /// Batch job queue (name or ARN) the worker jobs run in.
    #[arg(long, env = "FACEGROUP_JOB_QUEUE")]
    job_queue: String,
    /// Worker job definition (name, name:revision or ARN).
    #[arg(long, env = "FACEGROUP_JOB_DEFINITION")]
    job_definition: String,
    /// Name of submitted jobs; active jobs whose name starts with it are counted.
    #[arg(long, env = "FACEGROUP_JOB_NAME")]
    job_name: String,
    /// Messages one job is expected to process.
    #[arg(long, env = "FACEGROUP_MESSAGES_PER_JOB", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..))]
    messages_per_job: u64,
    /// Upper bound on this worker's queued + running jobs.
    #[arg(long, env = "FACEGROUP_MAX_JOBS", default_value_t = 64)]
    max_jobs: u64,
    /// Decide and print, submit nothing.
    #[arg(long, env = "FACEGROUP_SCALER_DRY_RUN", default_value_t = false)]
    dry_run: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let target = Target {
        queue_url: args.queue_url,
        job_queue: args.job_queue,
        job_definition: args.job_definition,
        job_name: args.job_name,
    };
    let policy = Policy {
        messages_per_job: args.messages_per_job,
        max_jobs: args.max_jobs,
    };
    let conf = config_loader().load().await;
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let batch = aws_sdk_batch::Client::new(&conf);
    match scale_once(&sqs, &batch, &target, policy, args.dry_run).await {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("report serialises")
            );
        }
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "scaling round failed");
            std::process::exit(1);
        }
    }
}
