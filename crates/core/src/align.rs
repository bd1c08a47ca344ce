//! Face alignment: a least-squares similarity transform (Umeyama) from the five detected
//! keypoints to the ArcFace template, then a bilinear warp to the embedder's input size.

use image::RgbImage;

use crate::detect::Landmarks;
use crate::imgproc::warp_affine_bilinear;

/// Keypoint positions of the standard ArcFace 112x112 crop (InsightFace's `arcface_dst`).
pub const ARCFACE_TEMPLATE: Landmarks = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// Side of the standard aligned crop.
pub const ALIGNED_SIZE: u32 = 112;

/// A 2x3 affine matrix mapping source pixels to destination pixels.
pub type Affine = [[f32; 3]; 2];

/// The template scaled to a crop of `size` pixels, as InsightFace's `estimate_norm` does
/// (multiples of 112 scale; multiples of 128 scale and shift right by 8/128 of the side).
pub fn template_for(size: u32) -> Landmarks {
    let (ratio, shift) = if size.is_multiple_of(112) {
        (size as f32 / 112.0, 0.0)
    } else {
        let r = size as f32 / 128.0;
        (r, 8.0 * r)
    };
    ARCFACE_TEMPLATE.map(|[x, y]| [x * ratio + shift, y * ratio])
}

/// The similarity transform (rotation, uniform scale, translation) minimising the squared
/// distance from transformed `src` points to `dst` points.
///
/// In 2-D Umeyama's SVD solution reduces to a closed form: with centred points, the optimal
/// `[a -b; b a]` has `a = sum(x*u + y*v) / sum(x^2 + y^2)` and `b = sum(x*v - y*u) / sum(x^2 + y^2)`,
/// which is always a proper rotation, matching Umeyama (and scikit-image) whenever the point sets
/// are not mirror images of each other.
pub fn similarity_transform(src: &[[f32; 2]], dst: &[[f32; 2]]) -> Affine {
    let n = src.len().min(dst.len()).max(1) as f64;
    let mean = |pts: &[[f32; 2]]| {
        let (sx, sy) = pts.iter().fold((0.0, 0.0), |(ax, ay), p| {
            (ax + f64::from(p[0]), ay + f64::from(p[1]))
        });
        (sx / n, sy / n)
    };
    let (smx, smy) = mean(src);
    let (dmx, dmy) = mean(dst);
    let (mut num_a, mut num_b, mut den) = (0.0f64, 0.0f64, 0.0f64);
    for (s, d) in src.iter().zip(dst) {
        let (x, y) = (f64::from(s[0]) - smx, f64::from(s[1]) - smy);
        let (u, v) = (f64::from(d[0]) - dmx, f64::from(d[1]) - dmy);
        num_a += x * u + y * v;
        num_b += x * v - y * u;
        den += x * x + y * y;
    }
    if den <= f64::EPSILON {
        // All keypoints coincide: no rotation or scale can be recovered.
        return [
            [1.0, 0.0, (dmx - smx) as f32],
            [0.0, 1.0, (dmy - smy) as f32],
        ];
    }
    let a = num_a / den;
    let b = num_b / den;
    let tx = dmx - (a * smx - b * smy);
    let ty = dmy - (b * smx + a * smy);
    [
        [a as f32, -b as f32, tx as f32],
        [b as f32, a as f32, ty as f32],
    ]
}

/// Applies an affine matrix to a point.
pub fn transform_point(m: &Affine, p: [f32; 2]) -> [f32; 2] {
    [
        m[0][0] * p[0] + m[0][1] * p[1] + m[0][2],
        m[1][0] * p[0] + m[1][1] * p[1] + m[1][2],
    ]
}

/// Warps the face with `landmarks` to a `size x size` crop aligned to the ArcFace template.
/// Returns the crop and the transform used (image -> crop).
pub fn align_face(image: &RgbImage, landmarks: &Landmarks, size: u32) -> (RgbImage, Affine) {
    let m = similarity_transform(landmarks, &template_for(size));
    (warp_affine_bilinear(image, &m, size, size), m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_known_similarity() {
        // dst = 1.5 * R(30deg) * src + (10, -4)
        let (c, s) = (
            30f32.to_radians().cos() * 1.5,
            30f32.to_radians().sin() * 1.5,
        );
        let src = ARCFACE_TEMPLATE;
        let dst = src.map(|[x, y]| [c * x - s * y + 10.0, s * x + c * y - 4.0]);
        let m = similarity_transform(&src, &dst);
        assert!((m[0][0] - c).abs() < 1e-4 && (m[1][0] - s).abs() < 1e-4);
        assert!((m[0][2] - 10.0).abs() < 1e-3 && (m[1][2] + 4.0).abs() < 1e-3);
        for (p, q) in src.iter().zip(&dst) {
            let t = transform_point(&m, *p);
            assert!((t[0] - q[0]).abs() < 1e-3 && (t[1] - q[1]).abs() < 1e-3);
        }
    }

    #[test]
    fn template_maps_to_itself() {
        let m = similarity_transform(&ARCFACE_TEMPLATE, &template_for(112));
        assert!((m[0][0] - 1.0).abs() < 1e-5 && m[0][1].abs() < 1e-5 && m[0][2].abs() < 1e-3);
        let t128 = template_for(128);
        assert!((t128[0][0] - (38.2946 * 128.0 / 128.0 + 8.0)).abs() < 1e-4);
    }

    #[test]
    fn degenerate_points_do_not_produce_nan() {
        let p = [[5.0, 5.0]; 5];
        let m = similarity_transform(&p, &ARCFACE_TEMPLATE);
        assert!(m.iter().flatten().all(|v| v.is_finite()));
    }
}
