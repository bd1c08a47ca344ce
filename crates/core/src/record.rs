//! The contracts every front end shares: how a face is named, which models made it, what is
//! stored of it, and what grouping needs of it. The CLI's store and the workers' MongoDB
//! documents are encodings of [`FaceRecord`]; nothing else builds face ids or model versions.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::group::FaceInput;
use crate::pipeline::Face;
use crate::quality::Quality;

/// The model version faces are recorded under: `detector+embedder` file stems, e.g.
/// `scrfd_500m_bnkps+w600k_mbf`. Embeddings of different versions are not comparable, so every
/// store keys faces by it and grouping only ever mixes faces of one version.
pub fn model_version(detector: &Path, embedder: &Path) -> String {
    format!("{}+{}", file_stem(detector), file_stem(embedder))
}

/// The id of face `index` of image `image_key` under `model_version`: `image:model:index`.
///
/// `image_key` is whatever names the image uniquely in its store (a path relative to the photo
/// folder in the CLI, `gallery/image` in the workers). The model version contains no `:` and
/// the index is a number, so the id splits back from the right even when the image key holds
/// `:` itself.
pub fn face_id(image_key: &str, model_version: &str, index: usize) -> String {
    format!("{image_key}:{model_version}:{index}")
}

/// One analysed face as stored: where it is, what the models said, its quality and embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceRecord {
    /// [`face_id`] of the face.
    pub face_id: String,
    /// The image key the face id was built from.
    pub image_id: String,
    pub model_version: String,
    /// Position in the image's face list (best detector score first).
    pub index: u32,
    /// `[x1, y1, x2, y2]` in pixels of the upright image.
    pub bbox: [f32; 4],
    /// Left eye, right eye, nose, left and right mouth corner.
    pub landmarks: [[f32; 2]; 5],
    /// Detector score.
    pub score: f32,
    pub quality: Quality,
    /// Unit length: the dot product of two embeddings is their cosine similarity.
    pub embedding: Vec<f32>,
}

impl FaceRecord {
    /// The record of `face`, found in image `image_key` by the models of `model_version`.
    pub fn new(image_key: &str, model_version: &str, face: &Face) -> Self {
        let b = &face.bbox;
        Self {
            face_id: face_id(image_key, model_version, face.index),
            image_id: image_key.to_string(),
            model_version: model_version.to_string(),
            index: face.index as u32,
            bbox: [b.x1, b.y1, b.x2, b.y2],
            landmarks: face.landmarks,
            score: face.score,
            quality: face.quality.clone(),
            embedding: face.embedding.clone(),
        }
    }

    /// What grouping needs of the face. A face with quality reasons neither seeds nor bridges
    /// persons (see [`crate::group`]).
    pub fn group_input(&self) -> FaceInput {
        FaceInput {
            face_id: self.face_id.clone(),
            image_id: self.image_id.clone(),
            embedding: self.embedding.clone(),
            quality_ok: self.quality.passes(),
            quality: self.quality.overall,
        }
    }
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_versions_are_one_format() {
        let v = model_version(
            Path::new("models/scrfd_500m_bnkps.onnx"),
            Path::new("w600k_mbf.onnx"),
        );
        assert_eq!(v, "scrfd_500m_bnkps+w600k_mbf");
        assert_eq!(
            face_id("g1/img", &v, 2),
            "g1/img:scrfd_500m_bnkps+w600k_mbf:2"
        );
        assert_ne!(face_id("img", "a+b", 2), face_id("img", "a+c", 2));
    }
}
