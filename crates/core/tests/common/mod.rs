//! The core-specific helpers of the integration tests, on the shared test kit's paths (models,
//! photos, ONNX Runtime library; `scripts/setup.sh` fetches all of them, and a missing one fails
//! the test with the fix to run). They need core's types, so they live here, not in the kit.
#![allow(dead_code, unused_imports)]

use facegroup_core::{Groups, Pipeline, PipelineConfig};
pub use facegroup_testkit::{image_bytes, repo_root};

/// The small production models, on the ONNX Runtime library the kit finds.
pub fn config() -> PipelineConfig {
    let mut cfg = PipelineConfig::with_models(
        &facegroup_testkit::models_dir(),
        "scrfd_500m_bnkps.onnx",
        "w600k_mbf.onnx",
    );
    cfg.runtime.dylib_path = Some(facegroup_testkit::ort_dylib());
    cfg
}

pub fn pipeline() -> Pipeline {
    Pipeline::new(&config()).unwrap_or_else(|e| panic!("pipeline: {e}"))
}

/// The pipeline with InsightFace's exact 640x640 letterbox (`DetectMode::Exact`).
pub fn exact_pipeline() -> Pipeline {
    let mut cfg = config();
    cfg.detector.mode = facegroup_core::DetectMode::Exact;
    Pipeline::new(&cfg).unwrap_or_else(|e| panic!("pipeline: {e}"))
}

/// Cosine similarity of two unit vectors.
pub fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The person that face `face_id` is grouped into, if any.
pub fn person_of<'a>(groups: &'a Groups, face_id: &str) -> Option<&'a str> {
    groups
        .persons
        .iter()
        .find(|p| p.face_ids.iter().any(|f| f == face_id))
        .map(|p| p.person_id.as_str())
}
