//! SCRFD (InsightFace's Sample and Computation Redistribution face detector) through ONNX
//! Runtime, with InsightFace's pre- and post-processing so results match `insightface` 0.7.3.

use std::collections::HashMap;

use image::RgbImage;
use ndarray::Array4;
use ort::session::Session;
use ort::value::TensorRef;

use super::layout::{OutputLayout, TensorRank};
use super::nms::nms;
use super::priors::anchor_centers;
use super::{BBox, DetectMode, Detection, DetectorConfig, FaceDetector, Landmarks};
use crate::error::ModelError;
use crate::imgproc::resize_bilinear_rows;
use crate::runtime::{build_session, model_name, tensor_shape, RuntimeConfig};

/// An SCRFD detector session.
pub struct Scrfd {
    session: Session,
    name: String,
    cfg: DetectorConfig,
    layout: OutputLayout,
    /// `(width, height)` when the model fixes its input size; otherwise the configured square.
    input_size: (u32, u32),
    /// Whether the model takes any input shape (then `fast` mode applies).
    dynamic: bool,
    /// Anchor centres per `(input width, input height, stride)`, made on first use of a shape.
    priors: HashMap<(u32, u32, u32), Vec<[f32; 2]>>,
}

impl Scrfd {
    /// Loads the model and reads its input size and output layout.
    pub fn new(cfg: DetectorConfig, runtime: &RuntimeConfig) -> Result<Self, ModelError> {
        let session = build_session(&cfg.model_path, runtime, None)?;
        let name = model_name(&cfg.model_path);
        let layout_err = |reason: String| ModelError::Layout {
            model: name.clone(),
            reason,
        };
        let [input] = session.inputs() else {
            return Err(layout_err(format!(
                "{} inputs, expected one image tensor",
                session.inputs().len()
            )));
        };
        let (input_size, dynamic) = match tensor_shape(input.dtype()) {
            Some([_, 3, h, w]) if *h > 0 && *w > 0 => ((*w as u32, *h as u32), false),
            Some([_, 3, _, _]) => ((cfg.input_size, cfg.input_size), true),
            other => {
                return Err(layout_err(format!(
                    "input shape {other:?}, expected [N, 3, H, W]"
                )))
            }
        };
        if input_size.0 % 32 != 0 || input_size.1 % 32 != 0 || input_size.0 == 0 {
            return Err(layout_err(format!(
                "input size {input_size:?} is not a positive multiple of 32"
            )));
        }
        let outputs: Vec<(String, Vec<i64>)> = session
            .outputs()
            .iter()
            .map(|o| {
                let shape = tensor_shape(o.dtype())
                    .map(<[i64]>::to_vec)
                    .unwrap_or_default();
                (o.name().to_string(), shape)
            })
            .collect();
        let layout = OutputLayout::from_outputs(&name, &outputs)?;
        if cfg.mode == DetectMode::Fast && !(cfg.max_upscale.is_finite() && cfg.max_upscale > 0.0) {
            return Err(layout_err(format!(
                "max upscale {} must be positive",
                cfg.max_upscale
            )));
        }
        tracing::debug!(model = %name, ?layout, ?input_size, dynamic, "SCRFD loaded");
        Ok(Self {
            session,
            name,
            cfg,
            layout,
            input_size,
            dynamic,
            priors: HashMap::new(),
        })
    }

    /// The network input `(width, height)` for a `w x h` photo and the size it is resized to.
    fn fit(&self, w: u32, h: u32) -> ((u32, u32), (u32, u32)) {
        let (iw, ih) = self.input_size;
        let resized = letterbox_fit(w, h, iw, ih);
        if !(self.dynamic && self.cfg.mode == DetectMode::Fast) {
            return ((iw, ih), resized);
        }
        let up = f64::from(self.cfg.max_upscale);
        let resized = if f64::from(resized.1) > f64::from(h) * up {
            (
                ((f64::from(w) * up) as u32).clamp(1, iw),
                ((f64::from(h) * up) as u32).clamp(1, ih),
            )
        } else {
            resized
        };
        let round = |x: u32, max: u32| x.div_ceil(32).max(1).saturating_mul(32).min(max);
        ((round(resized.0, iw), round(resized.1, ih)), resized)
    }

    /// The output layout read from the model.
    pub fn layout(&self) -> &OutputLayout {
        &self.layout
    }

    /// The network input `(width, height)`.
    pub fn input_size(&self) -> (u32, u32) {
        self.input_size
    }

    fn infer_err(&self, e: impl std::fmt::Display) -> ModelError {
        ModelError::Inference {
            model: self.name.clone(),
            message: e.to_string(),
        }
    }
}

impl FaceDetector for Scrfd {
    fn detect(&mut self, image: &RgbImage) -> Result<Vec<Detection>, ModelError> {
        let ((iw, ih), (new_w, new_h)) = self.fit(image.width(), image.height());
        let (blob, det_scale) = letterbox_blob(image, (new_w, new_h), iw, ih);
        let anchors = self.layout.anchors_per_cell;
        for &s in &self.layout.strides {
            self.priors
                .entry((iw, ih, s))
                .or_insert_with(|| anchor_centers(iw, ih, s, anchors));
        }
        let tensor = TensorRef::from_array_view(&blob).map_err(|e| self.infer_err(e))?;
        let outputs =
            self.session
                .run(ort::inputs![tensor])
                .map_err(|e| ModelError::Inference {
                    model: self.name.clone(),
                    message: e.to_string(),
                })?;

        let mut dets = Vec::new();
        let threshold = self.cfg.score_threshold;
        for (si, &stride) in self.layout.strides.iter().enumerate() {
            let centers = &self.priors[&(iw, ih, stride)];
            let head = |idx: usize, channels: usize| -> Result<&[f32], ModelError> {
                let (shape, data) = outputs[idx].try_extract_tensor::<f32>().map_err(|e| {
                    ModelError::Inference {
                        model: self.name.clone(),
                        message: e.to_string(),
                    }
                })?;
                let anchors = match self.layout.rank {
                    TensorRank::Batched => shape.get(1),
                    TensorRank::Unbatched => shape.first(),
                };
                if anchors.copied() != Some(centers.len() as i64)
                    || data.len() < centers.len() * channels
                {
                    return Err(ModelError::Layout {
                        model: self.name.clone(),
                        reason: format!(
                            "stride {stride} output has shape {:?}, expected {} anchors x {channels}",
                            &shape[..],
                            centers.len()
                        ),
                    });
                }
                // Only the first image of the batch is used: one image per run.
                Ok(&data[..centers.len() * channels])
            };
            let scores = head(self.layout.scores[si], 1)?;
            let boxes = head(self.layout.boxes[si], 4)?;
            let kps = match &self.layout.keypoints {
                Some(k) => Some(head(k[si], 10)?),
                None => None,
            };
            let s = stride as f32;
            for (i, &score) in scores.iter().enumerate() {
                if score < threshold {
                    continue;
                }
                let [cx, cy] = centers[i];
                let d = &boxes[i * 4..i * 4 + 4];
                let bbox = BBox {
                    x1: (cx - d[0] * s) / det_scale,
                    y1: (cy - d[1] * s) / det_scale,
                    x2: (cx + d[2] * s) / det_scale,
                    y2: (cy + d[3] * s) / det_scale,
                };
                let landmarks = kps.map(|k| {
                    let k = &k[i * 10..i * 10 + 10];
                    let mut lm: Landmarks = [[0.0; 2]; 5];
                    for (j, p) in lm.iter_mut().enumerate() {
                        *p = [
                            (cx + k[2 * j] * s) / det_scale,
                            (cy + k[2 * j + 1] * s) / det_scale,
                        ];
                    }
                    lm
                });
                dets.push(Detection {
                    bbox,
                    score,
                    landmarks,
                });
            }
        }
        Ok(nms(dets, self.cfg.nms_threshold))
    }
}

/// The size a `w x h` photo is resized to so it fits `iw x ih` keeping its aspect ratio, with
/// InsightFace's arithmetic.
fn letterbox_fit(w: u32, h: u32, iw: u32, ih: u32) -> (u32, u32) {
    let im_ratio = f64::from(h) / f64::from(w);
    let model_ratio = f64::from(ih) / f64::from(iw);
    if im_ratio > model_ratio {
        (((f64::from(ih) / im_ratio) as u32).max(1), ih)
    } else {
        (iw, ((f64::from(iw) * im_ratio) as u32).max(1))
    }
}

/// Resizes `image` to `new_w x new_h` (at most `iw x ih`), places it top-left on a black
/// `iw x ih` canvas (InsightFace's letterbox) and normalises to `(x - 127.5) / 128` in NCHW
/// RGB. Returns the blob and the scale from original to network pixels.
fn letterbox_blob(
    image: &RgbImage,
    (new_w, new_h): (u32, u32),
    iw: u32,
    ih: u32,
) -> (Array4<f32>, f32) {
    let h = image.height();
    let det_scale = (f64::from(new_h) / f64::from(h)) as f32;
    let pad = (0.0 - 127.5) / 128.0;
    let (iw, ih) = (iw as usize, ih as usize);
    let mut blob = Array4::<f32>::from_elem((1, 3, ih, iw), pad);
    // One pass: each resized row goes straight into the planar blob (no resized image), through
    // raw slices, since ndarray's 4-D indexing per pixel costs more than the arithmetic.
    if let Some(planes) = blob.as_slice_mut() {
        let plane = iw * ih;
        resize_bilinear_rows(image, new_w, new_h, |y, row| {
            if y >= ih {
                return;
            }
            for (x, px) in row.chunks_exact(3).take(iw).enumerate() {
                for (c, &v) in px.iter().enumerate() {
                    planes[c * plane + y * iw + x] = (f32::from(v) - 127.5) / 128.0;
                }
            }
        });
    }
    (blob, det_scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterbox_keeps_aspect_and_pads_bottom_right() {
        let img = RgbImage::from_pixel(200, 100, image::Rgb([255, 255, 255]));
        let (blob, scale) = letterbox_blob(&img, letterbox_fit(200, 100, 64, 64), 64, 64);
        assert!((scale - 0.32).abs() < 1e-6);
        let white = (255.0 - 127.5) / 128.0;
        let pad = -127.5 / 128.0;
        assert_eq!(blob[[0, 0, 0, 0]], white);
        assert_eq!(blob[[0, 2, 31, 63]], white);
        assert_eq!(blob[[0, 1, 32, 0]], pad);
        // Tall image: pads on the right.
        let tall = RgbImage::from_pixel(50, 100, image::Rgb([200, 200, 200]));
        let (blob, scale) = letterbox_blob(&tall, letterbox_fit(50, 100, 64, 64), 64, 64);
        assert!((scale - 0.64).abs() < 1e-6);
        assert_eq!(blob[[0, 0, 63, 31]], (200.0 - 127.5) / 128.0);
        assert_eq!(blob[[0, 0, 63, 32]], pad);
    }
}
