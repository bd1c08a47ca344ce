//! Command-line flags shared by every command that runs the pipeline, and their translation
//! into an [`EngineConfig`]. The model and runtime flags themselves are
//! `facegroup_core::args::PipelineArgs`, the same the detection worker takes.

use facegroup_core::args::PipelineArgs;

use crate::engine::EngineConfig;

/// Threads, models and runtime. Every flag can also come from a `FACEGROUP_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Total CPU threads to use [default: available cores].
    #[arg(long, env = "FACEGROUP_THREADS", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

impl EngineArgs {
    /// Resolves the defaults that depend on the machine and builds the engine settings.
    pub fn to_config(&self) -> EngineConfig {
        let threads = self.threads.map_or_else(available_cores, |t| t as usize);
        // One single-threaded pipeline per thread measured fastest on CPU (2 threads, 8 test
        // photos: 10.4 images/s for 2 x 1 against 9.9 for 1 x 2): decoding, resizing and
        // post-processing are serial inside a pipeline, and the small models leave ONNX
        // Runtime's intra-op pool partly idle.
        let pipelines = self
            .pipeline
            .pipelines
            .map_or(threads, |k| k as usize)
            .max(1);
        EngineConfig {
            pipeline: self.pipeline.pipeline_config((threads / pipelines).max(1)),
            pipelines,
            threads,
        }
    }
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
