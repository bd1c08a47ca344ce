//! Error types. Decode errors are the caller's bad input (permanent: retrying cannot help);
//! model errors are the runtime's (a missing library, a broken GPU, a malformed model).

use std::path::PathBuf;

/// Why image bytes could not be turned into pixels.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty input: no image bytes")]
    Empty,
    #[error("input is {size} bytes, over the limit of {max} bytes")]
    TooManyBytes { size: usize, max: usize },
    #[error("unsupported image format: {0}")]
    Unsupported(String),
    #[error("image is {width}x{height} = {pixels} pixels, over the limit of {max_pixels}")]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        max_pixels: u64,
    },
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
}

/// Failures of ONNX Runtime or of a model file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "ONNX Runtime library not configured: set ORT_DYLIB_PATH to libonnxruntime.so \
         (scripts/setup.sh installs it from the onnxruntime wheel)"
    )]
    RuntimeNotConfigured,
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    RuntimeLoad { path: PathBuf, message: String },
    #[error("execution provider {provider} failed to initialise: {message}")]
    ExecutionProvider { provider: String, message: String },
    #[error("model file {path} not found (run scripts/fetch.py models)")]
    ModelMissing { path: PathBuf },
    #[error("cannot load model {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("model {model}: unexpected layout: {reason}")]
    Layout { model: String, reason: String },
    #[error("inference failed in {model}: {message}")]
    Inference { model: String, message: String },
}

/// Any failure of the pipeline on one image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl Error {
    /// True when the input itself is bad, so retrying the same bytes can never succeed.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Error::Decode(_))
    }
}
