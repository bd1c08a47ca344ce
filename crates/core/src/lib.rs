//! facegroup core: turns image bytes into aligned, embedded, quality-scored faces.
//!
//! The pipeline is: [`decode`] (EXIF orientation applied, pixel limit) -> [`detect`] (SCRFD through
//! ONNX Runtime) -> [`align`] (similarity transform to the ArcFace 112x112 template) -> [`embed`]
//! (ArcFace, L2-normalised 512-d) -> [`quality`] (sharpness, illumination, occlusion, pose, size,
//! detector score); [`thumbnail`] makes each face's JPEG thumbnails. [`Pipeline`] wires them together; each model role is a small trait so other
//! detectors or embedders can be swapped in; [`PipelinePool`] shares pipelines between threads.
//!
//! The contracts every front end shares live here, once: face ids and the model version
//! ([`record`]), the stored face ([`FaceRecord`]) and what grouping takes of it
//! ([`FaceRecord::group_input`]), full or incremental grouping ([`GroupMode`], [`regroup`]) and,
//! with the `clap` feature, the model/runtime flags ([`args`]).

pub mod align;
#[cfg(feature = "clap")]
pub mod args;
pub mod decode;
pub mod detect;
pub mod embed;
pub mod error;
pub mod graph_rewrite;
pub mod group;
pub mod imgproc;
pub mod pipeline;
pub mod pool;
pub mod quality;
pub mod record;
pub mod runtime;
pub mod thumbnail;

pub use decode::{decode_image, DecodeOptions};
pub use detect::{BBox, DetectMode, Detection, DetectorConfig, FaceDetector, Scrfd};
pub use embed::{ArcFace, EmbedderConfig, FaceEmbedder, EMBEDDING_DIM};
pub use error::{DecodeError, Error, ModelError};
pub use group::{
    assign_new_faces, group_faces, regroup, Constraints, Correction, CorrectionError, Corrections,
    FaceInput, GroupConfig, GroupError, GroupMode, Groups, KnnConfig, MustLink, Person,
};
pub use pipeline::{Face, Pipeline, PipelineConfig, StageTimes};
pub use pool::PipelinePool;
pub use quality::{Quality, QualityConfig, QualityReason};
pub use record::{face_id, model_version, FaceRecord};
pub use runtime::{ExecutionProvider, RuntimeConfig};
pub use thumbnail::{face_thumbnails, Thumbnails};

/// Re-exported so callers need not depend on `image` for the pixel type.
pub use image::RgbImage;
