//! `facegroup`: runs the face pipeline over a folder of photos on this machine, no cloud.
//!
//! `main` only parses the command line, installs logging and hands over to the command modules;
//! the work lives in [`engine`] (file walking, worker pool), [`store`] (the library database),
//! [`output`] and [`report`].

mod args;
mod bench;
mod corrections;
mod engine;
mod eval;
mod export;
mod find;
mod forget;
mod grouping;
mod output;
mod report;
mod run;
mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "facegroup",
    version,
    about = "Find, align, embed and rate the faces in a photo folder"
)]
struct Cli {
    /// Log line format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FACEGROUP_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Analyse every photo under a folder and write faces, crops and an HTML report.
    Run(run::RunArgs),
    /// Write the store's faces (jsonl) or persons (json) in the files' shapes.
    Export(export::ExportArgs),
    /// List the persons and photos that match the faces of a query photo.
    Find(find::FindArgs),
    /// Delete a photo's or a person's face data from the library, for good.
    Forget(forget::ForgetArgs),
    /// Correct persons: merge two, or name one.
    Person(corrections::PersonArgs),
    /// Correct faces: move one to a person, or take it out of one.
    Face(corrections::FaceArgs),
    /// Measure end-to-end throughput (no output written).
    Bench(bench::BenchArgs),
    /// Evaluate grouping against labelled folders.
    EvalGroups(eval::EvalArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match &cli.command {
        Command::Run(args) => run::run(args),
        Command::Export(args) => export::run(args),
        Command::Find(args) => find::run(args),
        Command::Forget(args) => forget::run(args),
        Command::Person(args) => corrections::person(args),
        Command::Face(args) => corrections::face(args),
        Command::Bench(args) => bench::run(args),
        Command::EvalGroups(args) => eval::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line ("loading models: model file
            // ... not found"), which is what a user needs to fix the problem.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr so stdout stays clean for summaries and `bench --json`. ONNX Runtime
/// reports execution-provider failures only through `tracing`, so a subscriber is always on.
/// Without RUST_LOG the level is info, except that `ort` is held to warnings: at info it logs
/// every graph optimisation pass (hundreds of lines per session), while its provider failures
/// are warnings or errors and still show.
fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
