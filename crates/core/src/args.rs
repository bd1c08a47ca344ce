//! Command-line flags for the models and the inference runtime, shared by the `facegroup` CLI
//! and both workers (feature `clap`), so each setting has one name and one environment
//! variable everywhere.

use std::path::PathBuf;

use crate::detect::DetectMode;
use crate::pipeline::PipelineConfig;
use crate::record::model_version;
use crate::runtime::ExecutionProvider;

/// Which models, and where they run. Enough to name the model version (the grouping worker
/// needs no more).
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
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
}

impl ModelArgs {
    /// The version the faces of these models are recorded under.
    pub fn model_version(&self) -> String {
        model_version(
            &self.models_dir.join(&self.detector),
            &self.models_dir.join(&self.embedder),
        )
    }
}

/// Models plus how the pipelines run.
#[derive(Debug, Clone, clap::Args)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Pipelines (ONNX Runtime session pairs) working in parallel [default: the CLI uses one
    /// per thread, the detection worker one].
    #[arg(long, env = "FACEGROUP_PIPELINES", value_parser = clap::value_parser!(u32).range(1..))]
    pub pipelines: Option<u32>,
    /// Threads ONNX Runtime uses inside one operator, per pipeline [default: the CLI shares its
    /// threads out among the pipelines; the worker lets ONNX Runtime choose].
    #[arg(long, env = "FACEGROUP_INTRA_THREADS")]
    pub intra_threads: Option<usize>,
    /// Detector input side in pixels (a multiple of 32).
    #[arg(long, env = "FACEGROUP_DET_SIZE", default_value_t = 640)]
    pub det_size: u32,
    /// How photos are fitted to the detector: `exact` is InsightFace's 640x640 letterbox
    /// (identical results), `fast` pads only to the next multiple of 32 and enlarges small
    /// photos at most `--max-upscale` times (default: not at all).
    #[arg(long, env = "FACEGROUP_DET_MODE", value_enum, default_value_t = DetectMode::Fast)]
    pub det_mode: DetectMode,
    /// `fast` mode: the most a small photo is enlarged towards `--det-size`.
    #[arg(long, env = "FACEGROUP_MAX_UPSCALE", default_value_t = 1.0)]
    pub max_upscale: f32,
    /// Minimum detector score for a face.
    #[arg(long, env = "FACEGROUP_DET_THRESH", default_value_t = 0.5)]
    pub det_thresh: f32,
    /// Largest image (width x height) decoded; bigger files fail as bad input
    /// [default: 100 megapixels].
    #[arg(long, env = "FACEGROUP_MAX_PIXELS")]
    pub max_pixels: Option<u64>,
    /// libonnxruntime.so to load.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: Option<PathBuf>,
}

impl PipelineArgs {
    /// The pipeline settings these flags describe, with `intra_threads` ONNX Runtime threads
    /// per operator when the flag does not set them (0: ONNX Runtime's choice).
    pub fn pipeline_config(&self, default_intra_threads: usize) -> PipelineConfig {
        let m = &self.model;
        let mut cfg = PipelineConfig::with_models(&m.models_dir, &m.detector, &m.embedder);
        cfg.detector.input_size = self.det_size;
        cfg.detector.mode = self.det_mode;
        cfg.detector.max_upscale = self.max_upscale;
        cfg.detector.score_threshold = self.det_thresh;
        if let Some(max) = self.max_pixels {
            cfg.decode.max_pixels = max;
        }
        cfg.runtime.provider = m.provider;
        cfg.runtime.intra_threads = self.intra_threads.unwrap_or(default_intra_threads);
        cfg.runtime.dylib_path = self.ort_dylib_path.clone();
        cfg
    }
}
