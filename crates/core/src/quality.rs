//! Face quality: measurements with documented scales, and pass/fail reasons modelled on AWS
//! Rekognition's `UnindexedFace` reasons (LOW_SHARPNESS, LOW_BRIGHTNESS, EXTREME_POSE,
//! SMALL_BOUNDING_BOX, LOW_CONFIDENCE, ...), so downstream grouping can keep poor faces from
//! seeding or bridging persons.
//!
//! Photometric measures are taken on the aligned crop's inner face region (eyes to chin,
//! cheek to cheek), which excludes most background and hair, so they describe the face rather
//! than the scene.
//!
//! Occlusion proxy: keypoint-geometry consistency. SCRFD regresses all five keypoints even when
//! part of the face is hidden; under a hand, a mask or a crop at the photo edge they drift off
//! the face's usual layout or outside the face box. We measure (a) the share of keypoints
//! outside the detector's box and (b) the residual of the best similarity fit of the keypoints
//! to the ArcFace template, relative to the template's eye distance. We chose this over comparing
//! lower- and upper-face texture because texture also changes with beards, make-up, shadows and
//! skin tone, which would flag unoccluded faces unevenly across people, whereas the geometry test
//! only looks at where the detector believed the face parts were.

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::align::{similarity_transform, transform_point, ARCFACE_TEMPLATE};
use crate::detect::Detection;

/// Thresholds deciding the [`QualityReason`]s. Defaults suit gallery photos with the
/// 112x112 ArcFace crop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QualityConfig {
    /// Minimum variance of the Laplacian on the crop (grey levels squared). Default 40.
    pub min_sharpness: f32,
    /// Mean grey level of the face region, 0-255: below `min_brightness` (default 45) is
    /// LOW_BRIGHTNESS, above `max_brightness` (default 220) HIGH_BRIGHTNESS.
    pub min_brightness: f32,
    pub max_brightness: f32,
    /// Minimum standard deviation of grey levels (default 18): LOW_CONTRAST below it.
    pub min_contrast: f32,
    /// Largest share of the face region clipped to black (<= 5) or white (>= 250). Default 0.3.
    pub max_clipped: f32,
    /// Pose limits in degrees. Defaults: yaw 45, pitch 30.
    pub max_yaw: f32,
    pub max_pitch: f32,
    /// Minimum shorter side of the face box in image pixels. Default 40 (Rekognition's minimum
    /// face of 40x40 pixels).
    pub min_face_size: f32,
    /// Minimum detector score. Default 0.6 (detection itself keeps faces from 0.5).
    pub min_det_score: f32,
    /// Largest occlusion score, 0-1. Default 0.5.
    pub max_occlusion: f32,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            min_sharpness: 40.0,
            min_brightness: 45.0,
            max_brightness: 220.0,
            min_contrast: 18.0,
            max_clipped: 0.3,
            max_yaw: 45.0,
            max_pitch: 30.0,
            min_face_size: 40.0,
            min_det_score: 0.6,
            max_occlusion: 0.5,
        }
    }
}

/// Why a face is considered poor for recognition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum QualityReason {
    LowSharpness,
    LowBrightness,
    HighBrightness,
    LowContrast,
    ClippedExposure,
    ExtremePose,
    SmallBoundingBox,
    LowConfidence,
    Occluded,
}

/// Quality measurements of one face.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Variance of the 4-neighbour Laplacian of the grey crop; higher is sharper. Sharp
    /// frontal faces score in the hundreds, visibly blurred ones under 40.
    pub sharpness: f32,
    /// Mean grey level of the face region, 0 (black) to 255 (white).
    pub brightness: f32,
    /// Standard deviation of grey levels in the face region.
    pub contrast: f32,
    /// Share (0-1) of face-region pixels at >= 250.
    pub highlights: f32,
    /// Share (0-1) of face-region pixels at <= 5.
    pub shadows: f32,
    /// Head rotation in degrees estimated from the keypoints: yaw (positive: nose toward the
    /// image's right), pitch (positive: looking down), roll (positive: clockwise in the image).
    /// Approximate: a rigid-face model, good to about 10 degrees, enough to flag profiles.
    pub yaw: f32,
    pub pitch: f32,
    pub roll: f32,
    /// Shorter side of the face box in image pixels.
    pub face_size: f32,
    /// Detector confidence, 0-1.
    pub det_score: f32,
    /// Occlusion score, 0 (keypoints consistent) to 1 (keypoints off the face).
    pub occlusion: f32,
    /// Overall usefulness for recognition, 0-1: the product of the detector score and soft
    /// versions of each check. Used to rank faces (e.g. a person's representative).
    pub overall: f32,
    /// Failed checks; empty when the face is good.
    pub reasons: Vec<QualityReason>,
}

impl Quality {
    pub fn passes(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// Measures a face from its detection and aligned crop.
pub fn assess(det: &Detection, crop: &RgbImage, cfg: &QualityConfig) -> Quality {
    let gray = to_gray(crop);
    let (cw, ch) = crop.dimensions();
    let region = face_region(cw, ch);
    let sharpness = laplacian_variance(&gray, cw, region);
    let photo = photometrics(&gray, cw, region);
    let (yaw, pitch, roll) = det.landmarks.map(|l| pose(&l)).unwrap_or((0.0, 0.0, 0.0));
    let occlusion = det.landmarks.map(|l| occlusion(det, &l)).unwrap_or(0.0);
    let face_size = det.bbox.width().min(det.bbox.height());

    let mut reasons = Vec::new();
    let mut flag = |bad: bool, r: QualityReason| {
        if bad {
            reasons.push(r);
        }
    };
    flag(sharpness < cfg.min_sharpness, QualityReason::LowSharpness);
    flag(
        photo.mean < cfg.min_brightness,
        QualityReason::LowBrightness,
    );
    flag(
        photo.mean > cfg.max_brightness,
        QualityReason::HighBrightness,
    );
    flag(photo.std < cfg.min_contrast, QualityReason::LowContrast);
    flag(
        photo.highlights + photo.shadows > cfg.max_clipped,
        QualityReason::ClippedExposure,
    );
    flag(
        yaw.abs() > cfg.max_yaw || pitch.abs() > cfg.max_pitch,
        QualityReason::ExtremePose,
    );
    flag(
        face_size < cfg.min_face_size,
        QualityReason::SmallBoundingBox,
    );
    flag(det.score < cfg.min_det_score, QualityReason::LowConfidence);
    flag(occlusion > cfg.max_occlusion, QualityReason::Occluded);

    let soft = |v: f32, limit: f32| (v / limit).clamp(0.0, 1.0);
    let overall = det.score
        * soft(sharpness, 2.0 * cfg.min_sharpness)
        * soft(face_size, 2.0 * cfg.min_face_size)
        * (1.0 - (yaw.abs() / 90.0).min(1.0))
        * (1.0 - (pitch.abs() / 90.0).min(1.0))
        * (1.0 - occlusion)
        * soft(photo.std, cfg.min_contrast);
    Quality {
        sharpness,
        brightness: photo.mean,
        contrast: photo.std,
        highlights: photo.highlights,
        shadows: photo.shadows,
        yaw,
        pitch,
        roll,
        face_size,
        det_score: det.score,
        occlusion,
        overall,
        reasons,
    }
}

/// Inner face rectangle `(x0, y0, x1, y1)` of an aligned crop: eyes to chin, cheek to cheek
/// (x 20-92, y 28-108 of the 112 template, scaled).
fn face_region(w: u32, h: u32) -> (u32, u32, u32, u32) {
    let sx = |v: u32| v * w / 112;
    let sy = |v: u32| v * h / 112;
    (sx(20), sy(28), sx(92), sy(108))
}

fn to_gray(img: &RgbImage) -> Vec<f32> {
    img.pixels()
        .map(|p| 0.299 * f32::from(p.0[0]) + 0.587 * f32::from(p.0[1]) + 0.114 * f32::from(p.0[2]))
        .collect()
}

fn laplacian_variance(gray: &[f32], w: u32, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> f32 {
    let w = w as usize;
    let (mut sum, mut sq, mut n) = (0.0f64, 0.0f64, 0usize);
    for y in (y0 as usize).max(1)..(y1 as usize).min(gray.len() / w.max(1) - 1) {
        for x in (x0 as usize).max(1)..(x1 as usize).min(w - 1) {
            let c = gray[y * w + x];
            let l = gray[y * w + x - 1]
                + gray[y * w + x + 1]
                + gray[(y - 1) * w + x]
                + gray[(y + 1) * w + x]
                - 4.0 * c;
            sum += f64::from(l);
            sq += f64::from(l) * f64::from(l);
            n += 1;
        }
    }
    if n == 0 {
        return 0.0;
    }
    let mean = sum / n as f64;
    (sq / n as f64 - mean * mean) as f32
}

struct Photometrics {
    mean: f32,
    std: f32,
    highlights: f32,
    shadows: f32,
}

fn photometrics(gray: &[f32], w: u32, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> Photometrics {
    let w = w as usize;
    let (mut sum, mut sq, mut hi, mut lo, mut n) = (0.0f64, 0.0f64, 0usize, 0usize, 0usize);
    for y in y0 as usize..(y1 as usize).min(gray.len() / w.max(1)) {
        for x in x0 as usize..(x1 as usize).min(w) {
            let v = gray[y * w + x];
            sum += f64::from(v);
            sq += f64::from(v) * f64::from(v);
            hi += usize::from(v >= 250.0);
            lo += usize::from(v <= 5.0);
            n += 1;
        }
    }
    if n == 0 {
        return Photometrics {
            mean: 0.0,
            std: 0.0,
            highlights: 0.0,
            shadows: 0.0,
        };
    }
    let nf = n as f64;
    let mean = sum / nf;
    Photometrics {
        mean: mean as f32,
        std: (sq / nf - mean * mean).max(0.0).sqrt() as f32,
        highlights: (hi as f64 / nf) as f32,
        shadows: (lo as f64 / nf) as f32,
    }
}

/// Depth of the nose tip in front of the eye/mouth plane relative to half the eye distance
/// and to the eye-mouth distance, from adult anthropometric averages (nose tip ~27 mm in front,
/// half interpupillary distance ~32 mm, eye line to mouth ~68 mm); they turn keypoint offsets
/// into angles.
const NOSE_DEPTH_OVER_HALF_EYES: f32 = 0.85;
const NOSE_DEPTH_OVER_EYE_MOUTH: f32 = 0.4;

/// (yaw, pitch, roll) in degrees from the five keypoints.
pub fn pose(l: &[[f32; 2]; 5]) -> (f32, f32, f32) {
    let [le, re, nose, lm, rm] = *l;
    let roll = (re[1] - le[1]).atan2(re[0] - le[0]);
    // Undo roll around the eye midpoint so yaw and pitch read off image axes.
    let mid = [(le[0] + re[0]) / 2.0, (le[1] + re[1]) / 2.0];
    let (c, s) = (roll.cos(), roll.sin());
    let derot = |p: [f32; 2]| {
        let (dx, dy) = (p[0] - mid[0], p[1] - mid[1]);
        [c * dx + s * dy, -s * dx + c * dy]
    };
    let (le, re, nose) = (derot(le), derot(re), derot(nose));
    let mouth = derot([(lm[0] + rm[0]) / 2.0, (lm[1] + rm[1]) / 2.0]);
    let half_eyes = ((re[0] - le[0]) / 2.0).abs().max(1e-3);
    let yaw = (nose[0] / half_eyes / NOSE_DEPTH_OVER_HALF_EYES).atan();
    let t = ARCFACE_TEMPLATE;
    let frontal = (t[2][1] - (t[0][1] + t[1][1]) / 2.0)
        / ((t[3][1] + t[4][1]) / 2.0 - (t[0][1] + t[1][1]) / 2.0);
    let eye_mouth = mouth[1].abs().max(1e-3);
    let pitch = ((nose[1] / eye_mouth - frontal) / NOSE_DEPTH_OVER_EYE_MOUTH).atan();
    (yaw.to_degrees(), pitch.to_degrees(), roll.to_degrees())
}

/// Occlusion score in [0, 1] from keypoint consistency (see the module docs).
fn occlusion(det: &Detection, l: &[[f32; 2]; 5]) -> f32 {
    let outside = l.iter().filter(|p| !det.bbox.contains(p[0], p[1])).count() as f32 / 5.0;
    let m = similarity_transform(l, &ARCFACE_TEMPLATE);
    let rms = (l
        .iter()
        .zip(&ARCFACE_TEMPLATE)
        .map(|(p, q)| {
            let t = transform_point(&m, *p);
            (t[0] - q[0]).powi(2) + (t[1] - q[1]).powi(2)
        })
        .sum::<f32>()
        / 5.0)
        .sqrt();
    let eye_dist = ARCFACE_TEMPLATE[1][0] - ARCFACE_TEMPLATE[0][0];
    // Frontal and moderately turned faces fit within ~8% of the eye distance; 25% is a face
    // whose parts are no longer where a face has them.
    let geometry = ((rms / eye_dist - 0.08) / (0.25 - 0.08)).clamp(0.0, 1.0);
    (2.0 * outside).max(geometry).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::BBox;

    fn det_with(l: [[f32; 2]; 5], score: f32) -> Detection {
        Detection {
            bbox: BBox {
                x1: 20.0,
                y1: 30.0,
                x2: 95.0,
                y2: 115.0,
            },
            score,
            landmarks: Some(l),
        }
    }

    #[test]
    fn frontal_template_has_no_pose_or_occlusion() {
        let (yaw, pitch, roll) = pose(&ARCFACE_TEMPLATE);
        assert!(yaw.abs() < 2.0 && pitch.abs() < 2.0 && roll.abs() < 1.0);
        let d = det_with(ARCFACE_TEMPLATE, 0.9);
        assert!(occlusion(&d, &ARCFACE_TEMPLATE) < 0.05);
    }

    #[test]
    fn nose_over_one_eye_reads_as_profile() {
        let mut l = ARCFACE_TEMPLATE;
        l[2][0] = l[1][0]; // nose under the right eye
        let (yaw, _, _) = pose(&l);
        assert!(yaw > 45.0, "yaw {yaw}");
        let d = det_with(l, 0.9);
        let img = RgbImage::from_fn(112, 112, |x, y| {
            image::Rgb([((x * 7 + y * 13) % 256) as u8; 3])
        });
        assert!(assess(&d, &img, &QualityConfig::default())
            .reasons
            .contains(&QualityReason::ExtremePose));
    }

    #[test]
    fn flat_dark_crop_fails_light_and_sharpness() {
        let img = RgbImage::from_pixel(112, 112, image::Rgb([10, 10, 10]));
        let q = assess(
            &det_with(ARCFACE_TEMPLATE, 0.55),
            &img,
            &QualityConfig::default(),
        );
        for r in [
            QualityReason::LowSharpness,
            QualityReason::LowBrightness,
            QualityReason::LowContrast,
            QualityReason::LowConfidence,
        ] {
            assert!(q.reasons.contains(&r), "missing {r:?} in {:?}", q.reasons);
        }
        assert!(!q.passes());
        assert_eq!(q.sharpness, 0.0);
    }

    #[test]
    fn keypoints_off_the_face_are_occluded() {
        let mut l = ARCFACE_TEMPLATE;
        l[3] = [200.0, 300.0];
        l[4] = [10.0, 300.0];
        assert!(occlusion(&det_with(l, 0.9), &l) > 0.5);
    }
}
