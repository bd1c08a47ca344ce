//! Command-line flags shared by every command that runs the pipeline, and their translation
//! into an [`EngineConfig`].

use std::path::PathBuf;

use facegroup_core::{ExecutionProvider, PipelineConfig};

use crate::engine::EngineConfig;

/// Models, runtime and parallelism. Every flag can also come from a `FACEGROUP_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Total CPU threads to use [default: available cores].
    #[arg(long, env = "FACEGROUP_THREADS", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Pipelines (ONNX Runtime session pairs) working in parallel; the threads are shared out
    /// among them as intra-op threads [default: one per thread].
    #[arg(long, env = "FACEGROUP_SESSIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub sessions: Option<u32>,
    /// Folder holding the model files.
    #[arg(long, env = "FACEGROUP_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// SCRFD detector file name inside --models-dir.
    #[arg(
        long,
        env = "FACEGROUP_DETECTOR",
        default_value = "scrfd_500m_bnkps.onnx"
    )]
    pub detector: String,
    /// ArcFace embedder file name inside --models-dir.
    #[arg(long, env = "FACEGROUP_EMBEDDER", default_value = "w600k_mbf.onnx")]
    pub embedder: String,
    /// Execution provider: cpu, cuda or cuda:N.
    #[arg(long, env = "FACEGROUP_PROVIDER", default_value = "cpu")]
    pub provider: ExecutionProvider,
    /// Detector input side in pixels (a multiple of 32).
    #[arg(long, env = "FACEGROUP_DET_SIZE", default_value_t = 640)]
    pub det_size: u32,
    /// Minimum detector score for a face.
    #[arg(long, env = "FACEGROUP_DET_THRESH", default_value_t = 0.5)]
    pub det_thresh: f32,
    /// Largest image (width x height) decoded; bigger files are reported as failed
    /// [default: 100 megapixels].
    #[arg(long, env = "FACEGROUP_MAX_PIXELS")]
    pub max_pixels: Option<u64>,
    /// libonnxruntime.so to load.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib: Option<PathBuf>,
}

impl EngineArgs {
    /// Resolves the defaults that depend on the machine and builds the engine settings.
    pub fn to_config(&self) -> EngineConfig {
        let threads = self.threads.map_or_else(available_cores, |t| t as usize);
        // One single-threaded pipeline per thread measured fastest on CPU (2 threads, 8 test
        // photos: 10.4 images/s for 2 x 1 against 9.9 for 1 x 2): decoding, resizing and
        // post-processing are serial inside a pipeline, and the small models leave ONNX
        // Runtime's intra-op pool partly idle.
        let sessions = self.sessions.map_or(threads, |k| k as usize).max(1);
        let mut pipeline =
            PipelineConfig::with_models(&self.models_dir, &self.detector, &self.embedder);
        pipeline.detector.input_size = self.det_size;
        pipeline.detector.score_threshold = self.det_thresh;
        if let Some(max) = self.max_pixels {
            pipeline.decode.max_pixels = max;
        }
        pipeline.runtime.provider = self.provider;
        pipeline.runtime.intra_threads = (threads / sessions).max(1);
        pipeline.runtime.dylib_path = self.ort_dylib.clone();
        EngineConfig {
            pipeline,
            sessions,
            threads,
        }
    }
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
