//! Face thumbnails: the aligned crop the embedding came from, and a context crop of the face
//! with some of its surroundings, both as JPEG.
//!
//! The aligned 112x112 crop is what the embedder saw, so it shows exactly the face that was
//! grouped (a reviewer can check a person against it); the context crop (the face box enlarged
//! [`CONTEXT_SCALE`] times about its centre, clamped to the photo, long side at most
//! [`CONTEXT_MAX_SIDE`]) is what a person recognises a face by in a user interface. Both come
//! from the decoded, upright full-resolution image, so they are oriented like the photo.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::imageops::{self, FilterType};
use image::RgbImage;

use crate::detect::BBox;
use crate::pipeline::Face;

/// How much larger than the face box the context crop is, per side.
pub const CONTEXT_SCALE: f32 = 1.6;
/// Longest side of the context crop in pixels (smaller crops are kept as they are).
pub const CONTEXT_MAX_SIDE: u32 = 256;
/// JPEG quality of both thumbnails.
pub const JPEG_QUALITY: u8 = 90;

/// A face's two thumbnails, JPEG-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbnails {
    /// The aligned crop (112x112 for ArcFace) the embedding was computed from.
    pub aligned: Vec<u8>,
    /// The face box enlarged [`CONTEXT_SCALE`] times, long side <= [`CONTEXT_MAX_SIDE`].
    pub context: Vec<u8>,
}

/// JPEG encoding failed (only for images the encoder cannot take, e.g. 0 pixels wide).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode face thumbnail as JPEG: {0}")]
pub struct ThumbnailError(String);

/// Both thumbnails of `face`, found in `image` (the upright image the pipeline analysed).
pub fn face_thumbnails(image: &RgbImage, face: &Face) -> Result<Thumbnails, ThumbnailError> {
    Ok(Thumbnails {
        aligned: encode_jpeg(&face.crop)?,
        context: encode_jpeg(&context_crop(image, &face.bbox))?,
    })
}

/// The face box enlarged [`CONTEXT_SCALE`] times about its centre, clamped to the image (at
/// least one pixel), scaled down so its long side is at most [`CONTEXT_MAX_SIDE`].
pub fn context_crop(image: &RgbImage, bbox: &BBox) -> RgbImage {
    let (w, h) = image.dimensions();
    let (cx, cy) = ((bbox.x1 + bbox.x2) / 2.0, (bbox.y1 + bbox.y2) / 2.0);
    let (half_w, half_h) = (
        bbox.width() * CONTEXT_SCALE / 2.0,
        bbox.height() * CONTEXT_SCALE / 2.0,
    );
    let clamp = |v: f32, max: u32| (v.max(0.0) as u32).min(max);
    let x0 = clamp((cx - half_w).floor(), w.saturating_sub(1));
    let y0 = clamp((cy - half_h).floor(), h.saturating_sub(1));
    let x1 = clamp((cx + half_w).ceil(), w).max(x0 + 1);
    let y1 = clamp((cy + half_h).ceil(), h).max(y0 + 1);
    let crop = imageops::crop_imm(image, x0, y0, x1 - x0, y1 - y0).to_image();
    let long = crop.width().max(crop.height());
    if long <= CONTEXT_MAX_SIDE {
        return crop;
    }
    let scale = CONTEXT_MAX_SIDE as f32 / long as f32;
    let nw = ((crop.width() as f32 * scale).round() as u32).clamp(1, CONTEXT_MAX_SIDE);
    let nh = ((crop.height() as f32 * scale).round() as u32).clamp(1, CONTEXT_MAX_SIDE);
    imageops::resize(&crop, nw, nh, FilterType::Triangle)
}

/// `img` as a baseline JPEG of [`JPEG_QUALITY`].
pub fn encode_jpeg(img: &RgbImage) -> Result<Vec<u8>, ThumbnailError> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut Cursor::new(&mut out), JPEG_QUALITY)
        .encode_image(img)
        .map_err(|e| ThumbnailError(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bbox(x1: f32, y1: f32, x2: f32, y2: f32) -> BBox {
        BBox { x1, y1, x2, y2 }
    }

    #[test]
    fn context_crop_is_enlarged_clamped_and_bounded() {
        let img = RgbImage::new(1000, 800);
        // 100x100 box in the middle: 160x160.
        assert_eq!(
            context_crop(&img, &bbox(450.0, 350.0, 550.0, 450.0)).dimensions(),
            (160, 160)
        );
        // At the top-left corner: clamped to the image (half the enlargement is cut off).
        assert_eq!(
            context_crop(&img, &bbox(0.0, 0.0, 100.0, 100.0)).dimensions(),
            (130, 130)
        );
        // A large box: 640x320 enlarged, clamped at the left edge to 620x320, then scaled so
        // the long side is 256 with the aspect kept.
        let c = context_crop(&img, &bbox(100.0, 100.0, 500.0, 300.0));
        assert_eq!(c.dimensions(), (256, 132));
        // Degenerate boxes outside the image still give a pixel, never a panic.
        assert_eq!(
            context_crop(&img, &bbox(5000.0, 5000.0, 5000.0, 5000.0)).dimensions(),
            (1, 1)
        );
    }

    #[test]
    fn thumbnails_are_jpegs_of_the_crops() {
        let mut img = RgbImage::new(64, 48);
        img.put_pixel(10, 10, image::Rgb([200, 10, 10]));
        let jpeg = encode_jpeg(&img).expect("encode");
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        let back = image::load_from_memory(&jpeg).expect("decode").to_rgb8();
        assert_eq!(back.dimensions(), (64, 48));
    }
}
