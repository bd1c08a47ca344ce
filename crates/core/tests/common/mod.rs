//! Locates the real models, test images and ONNX Runtime library the integration tests use.
//! `scripts/setup.sh` fetches all of them; a missing one fails the test with the fix to run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use facegroup_core::{Pipeline, PipelineConfig};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn models_dir() -> PathBuf {
    std::env::var_os("FACEGROUP_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models"))
}

pub fn images_dir() -> PathBuf {
    std::env::var_os("FACEGROUP_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("testdata/images"))
}

pub fn image_bytes(name: &str) -> Vec<u8> {
    let path = images_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `python3 scripts/fetch.py images` (or scripts/setup.sh)",
            path.display()
        )
    })
}

/// `ORT_DYLIB_PATH`, or the library inside the setup script's virtualenv.
pub fn ort_dylib() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let lib = repo_root().join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries.flatten().find_map(|py| {
            let capi = py.path().join("site-packages/onnxruntime/capi");
            std::fs::read_dir(capi).ok()?.flatten().find_map(|f| {
                let name = f.file_name().to_string_lossy().into_owned();
                name.starts_with("libonnxruntime.so.").then(|| f.path())
            })
        })
    });
    found.unwrap_or_else(|| {
        panic!("ONNX Runtime not found: set ORT_DYLIB_PATH or run scripts/setup.sh")
    })
}

pub fn config() -> PipelineConfig {
    let mut cfg =
        PipelineConfig::with_models(&models_dir(), "scrfd_500m_bnkps.onnx", "w600k_mbf.onnx");
    cfg.runtime.dylib_path = Some(ort_dylib());
    cfg
}

pub fn pipeline() -> Pipeline {
    Pipeline::new(&config()).unwrap_or_else(|e| panic!("pipeline: {e}"))
}

pub fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
