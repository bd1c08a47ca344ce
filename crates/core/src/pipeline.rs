//! The whole per-image job: decode -> detect -> align -> embed -> quality.

use std::path::Path;
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::align::{align_face, Affine, ARCFACE_TEMPLATE};
use crate::decode::{decode_image, DecodeOptions};
use crate::detect::{BBox, Detection, DetectorConfig, FaceDetector, Landmarks, Scrfd};
use crate::embed::{ArcFace, EmbedderConfig, FaceEmbedder};
use crate::error::{Error, ModelError};
use crate::quality::{assess, Quality, QualityConfig};
use crate::record::model_version;
use crate::runtime::RuntimeConfig;

/// Everything the pipeline needs, with working defaults for the test models in `models/`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PipelineConfig {
    pub detector: DetectorConfig,
    pub embedder: EmbedderConfig,
    pub quality: QualityConfig,
    pub runtime: RuntimeConfig,
    pub decode: DecodeOptions,
}

impl PipelineConfig {
    /// Defaults with both models taken from `dir` by file name.
    pub fn with_models(dir: &Path, detector_file: &str, embedder_file: &str) -> Self {
        let mut cfg = Self::default();
        cfg.detector.model_path = dir.join(detector_file);
        cfg.embedder.model_path = dir.join(embedder_file);
        cfg
    }
}

/// One analysed face.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Face {
    /// Position in the image's face list (best detector score first).
    pub index: usize,
    pub bbox: BBox,
    /// Keypoints used for alignment (estimated from the box for keypoint-less detectors).
    pub landmarks: Landmarks,
    pub score: f32,
    /// Unit-length embedding.
    pub embedding: Vec<f32>,
    pub quality: Quality,
    /// Image -> crop transform of the alignment.
    pub transform: Affine,
    /// The aligned crop the embedding was computed from.
    #[serde(skip)]
    pub crop: RgbImage,
}

/// A detector and an embedder ready to run. Not `Sync`: ONNX Runtime sessions must not run
/// concurrently, so run one `Pipeline` per worker thread.
pub struct Pipeline {
    detector: Box<dyn FaceDetector>,
    embedder: Box<dyn FaceEmbedder>,
    quality: QualityConfig,
    decode: DecodeOptions,
    model_version: String,
    times: StageTimes,
}

/// Time a pipeline spent per stage since it was built (for `facegroup bench --profile`): two
/// clock reads per stage and image, nothing next to the inference itself.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct StageTimes {
    /// Letterbox, detector run and its post-processing (decode, NMS).
    pub detect: Duration,
    /// Similarity transform and warp of each face to the embedder's crop.
    pub align: Duration,
    /// Embedder runs (all faces of a call in one batch).
    pub embed: Duration,
    /// Quality measures of each crop.
    pub quality: Duration,
    /// Images and faces analysed.
    pub images: u64,
    pub faces: u64,
}

impl std::ops::AddAssign for StageTimes {
    fn add_assign(&mut self, o: Self) {
        self.detect += o.detect;
        self.align += o.align;
        self.embed += o.embed;
        self.quality += o.quality;
        self.images += o.images;
        self.faces += o.faces;
    }
}

impl Pipeline {
    /// Loads SCRFD and ArcFace sessions as configured.
    pub fn new(cfg: &PipelineConfig) -> Result<Self, ModelError> {
        let model_version = model_version(&cfg.detector.model_path, &cfg.embedder.model_path);
        let detector = Scrfd::new(cfg.detector.clone(), &cfg.runtime)?;
        let embedder = ArcFace::new(cfg.embedder.clone(), &cfg.runtime)?;
        Ok(Self::from_parts(
            Box::new(detector),
            Box::new(embedder),
            cfg.quality.clone(),
            cfg.decode,
            model_version,
        ))
    }

    /// Assembles a pipeline from any detector and embedder.
    pub fn from_parts(
        detector: Box<dyn FaceDetector>,
        embedder: Box<dyn FaceEmbedder>,
        quality: QualityConfig,
        decode: DecodeOptions,
        model_version: String,
    ) -> Self {
        Self {
            detector,
            embedder,
            quality,
            decode,
            model_version,
            times: StageTimes::default(),
        }
    }

    /// Time spent per stage so far.
    pub fn stage_times(&self) -> StageTimes {
        self.times
    }

    /// The model version faces of this pipeline are recorded under ([`model_version`]).
    pub fn model_version(&self) -> &str {
        &self.model_version
    }

    /// Decodes and analyses encoded image bytes.
    pub fn analyze_bytes(&mut self, bytes: &[u8]) -> Result<(RgbImage, Vec<Face>), Error> {
        let image = decode_image(bytes, &self.decode)?;
        let faces = self.analyze(&image)?;
        Ok((image, faces))
    }

    /// Analyses one decoded image.
    pub fn analyze(&mut self, image: &RgbImage) -> Result<Vec<Face>, ModelError> {
        Ok(self.analyze_batch(&[image])?.pop().unwrap_or_default())
    }

    /// Analyses several images, embedding all their faces in shared batches.
    pub fn analyze_batch(&mut self, images: &[&RgbImage]) -> Result<Vec<Vec<Face>>, ModelError> {
        let size = self.embedder.input_size();
        let mut pending: Vec<(usize, Detection, Landmarks, RgbImage, Affine)> = Vec::new();
        for (i, image) in images.iter().enumerate() {
            let t = Instant::now();
            let detections = self.detector.detect(image)?;
            self.times.detect += t.elapsed();
            let t = Instant::now();
            for det in detections {
                let landmarks = det
                    .landmarks
                    .unwrap_or_else(|| landmarks_from_box(&det.bbox));
                let (crop, transform) = align_face(image, &landmarks, size);
                pending.push((i, det, landmarks, crop, transform));
            }
            self.times.align += t.elapsed();
        }
        let crops: Vec<&RgbImage> = pending.iter().map(|p| &p.3).collect();
        let t = Instant::now();
        let embeddings = self.embedder.embed(&crops)?;
        self.times.embed += t.elapsed();
        self.times.images += images.len() as u64;
        self.times.faces += pending.len() as u64;
        let t = Instant::now();
        let mut out: Vec<Vec<Face>> = images.iter().map(|_| Vec::new()).collect();
        for ((i, det, landmarks, crop, transform), embedding) in pending.into_iter().zip(embeddings)
        {
            let quality = assess(&det, &crop, &self.quality);
            let faces = &mut out[i];
            faces.push(Face {
                index: faces.len(),
                bbox: det.bbox,
                landmarks,
                score: det.score,
                embedding,
                quality,
                transform,
                crop,
            });
        }
        self.times.quality += t.elapsed();
        Ok(out)
    }
}

/// Template keypoints fitted into a box, for detectors without a keypoint head: the ArcFace
/// crop roughly spans the box, so its template scaled to the box is a fair guess.
fn landmarks_from_box(b: &BBox) -> Landmarks {
    ARCFACE_TEMPLATE.map(|[x, y]| [b.x1 + x / 112.0 * b.width(), b.y1 + y / 112.0 * b.height()])
}
