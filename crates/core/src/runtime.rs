//! ONNX Runtime setup: loading the shared library once, choosing the execution provider and
//! building sessions.
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`) from `ORT_DYLIB_PATH` or an explicit
//! path, so nothing is downloaded at build time and the same binary runs the CPU wheel here and
//! the GPU wheel in the CUDA container.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::ep;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU provider (the default).
    #[default]
    Cpu,
    /// NVIDIA CUDA on the given device. Registered with `error_on_failure`: if the provider
    /// cannot start (driver missing, device lost, a CPU-only runtime), session creation fails
    /// instead of silently falling back to the CPU.
    Cuda { device_id: i32 },
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecutionProvider::Cpu => f.write_str("cpu"),
            ExecutionProvider::Cuda { device_id } => write!(f, "cuda:{device_id}"),
        }
    }
}

impl FromStr for ExecutionProvider {
    type Err = String;

    /// Parses `cpu`, `cuda` or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda { device_id: 0 }),
            _ => match s.strip_prefix("cuda:") {
                Some(id) => id
                    .parse()
                    .map(|device_id| Self::Cuda { device_id })
                    .map_err(|_| format!("bad CUDA device id in {s:?}")),
                None => Err(format!(
                    "unknown execution provider {s:?} (expected cpu, cuda or cuda:N)"
                )),
            },
        }
    }
}

/// How sessions are created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RuntimeConfig {
    pub provider: ExecutionProvider,
    /// Threads ONNX Runtime may use inside one operator; 0 lets it choose (one per core).
    pub intra_threads: usize,
    /// `libonnxruntime.so` to load; `None` reads `ORT_DYLIB_PATH`.
    pub dylib_path: Option<PathBuf>,
}

/// Loads ONNX Runtime once per process and returns the shared environment.
///
/// A second call with a different library path is ignored: a process can hold only one runtime.
pub fn environment(dylib_path: Option<&Path>) -> Result<Environment, ModelError> {
    static ENV: OnceLock<Environment> = OnceLock::new();
    static INIT: Mutex<()> = Mutex::new(());
    if let Some(env) = ENV.get() {
        return Ok(env.clone());
    }
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = ENV.get() {
        return Ok(env.clone());
    }
    let path = match dylib_path {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .ok_or(ModelError::RuntimeNotConfigured)?,
    };
    if !path.is_file() {
        return Err(ModelError::RuntimeLoad {
            message: "no such file".into(),
            path,
        });
    }
    let builder = ort::init_from(&path).map_err(|e| ModelError::RuntimeLoad {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let env = builder
        .with_name("facegroup")
        .build()
        .map_err(|e| ModelError::RuntimeLoad {
            path: path.clone(),
            message: e.to_string(),
        })?;
    tracing::info!(path = %path.display(), "loaded ONNX Runtime");
    Ok(ENV.get_or_init(|| env).clone())
}

/// An exact rewrite of a model's bytes before loading; `Ok(None)` keeps the original.
pub(crate) type GraphRewrite = fn(&[u8]) -> Result<Option<Vec<u8>>, String>;

/// Builds a session for `model` with the configured provider and thread count, optionally
/// passing the model through `rewrite` first.
pub(crate) fn build_session(
    model: &Path,
    cfg: &RuntimeConfig,
    rewrite: Option<GraphRewrite>,
) -> Result<Session, ModelError> {
    if !model.is_file() {
        return Err(ModelError::ModelMissing {
            path: model.to_path_buf(),
        });
    }
    let env = environment(cfg.dylib_path.as_deref())?;
    let load_err = |message: String| ModelError::Load {
        path: model.to_path_buf(),
        message,
    };
    let mut builder = Session::builder(&env)
        .map_err(|e| load_err(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| load_err(e.to_string()))?;
    if cfg.intra_threads > 0 {
        builder = builder
            .with_intra_threads(cfg.intra_threads)
            .map_err(|e| load_err(e.to_string()))?;
    }
    builder = match cfg.provider {
        ExecutionProvider::Cpu => builder
            .with_execution_providers([ep::CPU::default().build()])
            .map_err(|e| load_err(e.to_string()))?,
        ExecutionProvider::Cuda { device_id } => builder
            .with_execution_providers([ep::CUDA::default()
                .with_device_id(device_id)
                .build()
                .error_on_failure()])
            .map_err(|e| ModelError::ExecutionProvider {
                provider: cfg.provider.to_string(),
                message: e.to_string(),
            })?,
    };
    if let Some(rewrite) = rewrite {
        let bytes = std::fs::read(model).map_err(|e| load_err(e.to_string()))?;
        match rewrite(&bytes) {
            Ok(Some(edited)) => {
                tracing::debug!(model = %model.display(), "loading rewritten graph");
                match builder.commit_from_memory(&edited) {
                    Ok(session) => return Ok(session),
                    // The rewrite is an optimisation only: a graph it edited into something
                    // ONNX Runtime refuses (an operator on a tensor of unexpected rank) loads as
                    // exported instead.
                    Err(e) => tracing::warn!(
                        model = %model.display(),
                        error = %e,
                        "rewritten graph refused, loading the original"
                    ),
                }
            }
            Ok(None) => {}
            // The rewrite is an optimisation only: a model it cannot parse still loads as is.
            Err(e) => tracing::warn!(model = %model.display(), error = %e, "graph rewrite skipped"),
        }
        return builder
            .commit_from_memory(&bytes)
            .map_err(|e| load_err(e.to_string()));
    }
    builder
        .commit_from_file(model)
        .map_err(|e| load_err(e.to_string()))
}

/// The name of a model for messages: its file name.
pub(crate) fn model_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The declared shape of a tensor outlet, `-1` for dynamic axes.
pub(crate) fn tensor_shape(t: &ort::value::ValueType) -> Option<&[i64]> {
    match t {
        ort::value::ValueType::Tensor { shape, .. } => Some(&shape[..]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_parses() {
        assert_eq!(
            "cpu".parse::<ExecutionProvider>(),
            Ok(ExecutionProvider::Cpu)
        );
        assert_eq!(
            "CUDA".parse::<ExecutionProvider>(),
            Ok(ExecutionProvider::Cuda { device_id: 0 })
        );
        assert_eq!(
            "cuda:3".parse::<ExecutionProvider>(),
            Ok(ExecutionProvider::Cuda { device_id: 3 })
        );
        assert!("tpu".parse::<ExecutionProvider>().is_err());
        assert!("cuda:x".parse::<ExecutionProvider>().is_err());
        assert_eq!(
            ExecutionProvider::Cuda { device_id: 1 }.to_string(),
            "cuda:1"
        );
    }
}
