//! Image decoding: JPEG, PNG, WebP and (feature `heif`, libheif) HEIC/HEIF/AVIF into RGB8,
//! upright.
//!
//! The format comes from the content, never from a file name: uploads and photo folders are
//! full of `.jpg` files that are really HEIC (phones "convert" by renaming). JPEG/PNG/WebP get
//! their EXIF orientation applied; HEIF files get their own transforms, see `heif` for the
//! rule that keeps orientation from being lost or applied twice. Guards against decompression
//! bombs by reading the header first and refusing images whose pixel count is over
//! [`DecodeOptions::max_pixels`] before any pixel buffer is allocated.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::DecodeError;

#[cfg(feature = "heif")]
mod heif;

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DecodeOptions {
    /// Largest accepted width x height. Default 100 megapixels: above any phone or DSLR photo
    /// (a 50 MP camera gives 8192x6144), far below the 10^10 pixels of a forged header.
    pub max_pixels: u64,
    /// Largest accepted encoded size in bytes. Default 64 MiB.
    pub max_bytes: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            max_pixels: 100_000_000,
            max_bytes: 64 << 20,
        }
    }
}

/// Decodes `bytes` into an RGB image, applying the EXIF orientation so a portrait phone photo
/// comes out upright.
pub fn decode_image(bytes: &[u8], opts: &DecodeOptions) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > opts.max_bytes {
        return Err(DecodeError::TooManyBytes {
            size: bytes.len(),
            max: opts.max_bytes,
        });
    }
    if let Some(brand) = heif_brand(bytes) {
        return decode_heif(bytes, opts, brand);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) => f,
        Some(other) => return Err(DecodeError::Unsupported(format!("{other:?}"))),
        None => {
            return Err(DecodeError::Unsupported(
                "unrecognised file signature".into(),
            ))
        }
    };
    if format == ImageFormat::Jpeg && !jpeg_has_end_of_image(bytes) {
        // zune-jpeg fills a truncated scan with grey rather than failing; a half-grey photo
        // would be embedded as garbage, so a missing end marker is treated as corruption.
        return Err(DecodeError::Corrupt(
            "JPEG ends before its end-of-image marker (truncated upload?)".into(),
        ));
    }
    if format == ImageFormat::Png {
        // The PNG decoder reads up to the first data chunk before reporting dimensions; a forged
        // header alone must still be answered as "too large", so read IHDR directly.
        if let Some((width, height)) = png_dimensions(bytes) {
            check_pixels(width, height, opts)?;
        }
    }
    let mut decoder = reader.into_decoder().map_err(map_image_error)?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height, opts)?;
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt(format!(
            "image has no pixels ({width}x{height})"
        )));
    }
    // A missing or malformed EXIF block is not worth rejecting a photo for: keep it unrotated.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(map_image_error)?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// HEIF brands (ISO/IEC 23008-12 HEVC images and sequences, MIAF, AVIF) that mark a file as
/// one libheif decodes.
const HEIF_BRANDS: [&[u8; 4]; 12] = [
    b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1",
    b"avif", b"avis",
];

/// The first HEIF brand of the file's leading `ftyp` box (major brand, then the compatible
/// ones), or `None` when it is not a HEIF file.
pub fn heif_brand(bytes: &[u8]) -> Option<[u8; 4]> {
    if bytes.get(4..8)? != b"ftyp" {
        return None;
    }
    let size = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let ftyp = bytes.get(8..size.clamp(8, bytes.len()))?;
    // Major brand, minor version (skipped), compatible brands.
    let major = ftyp.get(..4).into_iter();
    let compatible = ftyp.get(8..).unwrap_or_default().chunks_exact(4);
    major
        .chain(compatible)
        .filter_map(|b| <[u8; 4]>::try_from(b).ok())
        .find(|b| HEIF_BRANDS.contains(&b))
}

#[cfg(feature = "heif")]
fn decode_heif(
    bytes: &[u8],
    opts: &DecodeOptions,
    _brand: [u8; 4],
) -> Result<RgbImage, DecodeError> {
    heif::decode(bytes, opts)
}

#[cfg(not(feature = "heif"))]
fn decode_heif(_: &[u8], _: &DecodeOptions, brand: [u8; 4]) -> Result<RgbImage, DecodeError> {
    Err(DecodeError::Unsupported(format!(
        "HEIF/AVIF (brand {}): facegroup-core was built without the `heif` feature",
        String::from_utf8_lossy(&brand)
    )))
}

fn check_pixels(width: u32, height: u32, opts: &DecodeOptions) -> Result<(), DecodeError> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > opts.max_pixels {
        return Err(DecodeError::TooLarge {
            width,
            height,
            pixels,
            max_pixels: opts.max_pixels,
        });
    }
    Ok(())
}

/// Width and height from a PNG's IHDR chunk, which the format requires to come first.
fn png_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let ihdr = bytes.get(12..24)?;
    if &ihdr[..4] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(ihdr[4..8].try_into().ok()?);
    let h = u32::from_be_bytes(ihdr[8..12].try_into().ok()?);
    Some((w, h))
}

fn map_image_error(e: ImageError) -> DecodeError {
    match e {
        ImageError::Unsupported(u) => DecodeError::Unsupported(u.to_string()),
        ImageError::Limits(l) => DecodeError::Corrupt(format!("decoder limit: {l}")),
        other => DecodeError::Corrupt(other.to_string()),
    }
}

/// True when an end-of-image marker (FF D9) follows the last start-of-scan marker (FF DA).
/// Entropy-coded data byte-stuffs every FF, so neither marker can appear inside a scan; an EXIF
/// thumbnail's own markers come before the main image's scans and do not fool this check.
fn jpeg_has_end_of_image(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let last_eoi = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]);
    match (last_sos, last_eoi) {
        (Some(sos), Some(eoi)) => eoi > sos,
        // No scan at all: let the decoder produce its own error.
        (None, _) => true,
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_garbage_are_rejected() {
        let opts = DecodeOptions::default();
        assert!(matches!(decode_image(&[], &opts), Err(DecodeError::Empty)));
        assert!(matches!(
            decode_image(b"definitely not an image", &opts),
            Err(DecodeError::Unsupported(_))
        ));
    }

    #[test]
    fn byte_limit_is_enforced() {
        let opts = DecodeOptions {
            max_bytes: 4,
            ..Default::default()
        };
        assert!(matches!(
            decode_image(&[0xFF, 0xD8, 0xFF, 0xE0, 0], &opts),
            Err(DecodeError::TooManyBytes { size: 5, max: 4 })
        ));
    }

    #[test]
    fn heif_is_recognised_by_its_ftyp_brands() {
        let ftyp = |major: &[u8; 4], compat: &[&[u8; 4]]| {
            let mut b = ((16 + 4 * compat.len()) as u32).to_be_bytes().to_vec();
            b.extend_from_slice(b"ftyp");
            b.extend_from_slice(major);
            b.extend_from_slice(&[0; 4]);
            compat.iter().for_each(|c| b.extend_from_slice(*c));
            b.extend_from_slice(&[0; 8]);
            b
        };
        assert_eq!(heif_brand(&ftyp(b"heic", &[b"mif1"])), Some(*b"heic"));
        assert_eq!(heif_brand(&ftyp(b"avif", &[])), Some(*b"avif"));
        // A generic major brand with HEIF among the compatible ones (as some cameras write).
        assert_eq!(
            heif_brand(&ftyp(b"xxxx", &[b"isom", b"mif1"])),
            Some(*b"mif1")
        );
        // MP4 video is not a photo.
        assert_eq!(heif_brand(&ftyp(b"isom", &[b"mp41"])), None);
        assert_eq!(heif_brand(b"\xFF\xD8\xFF\xE0"), None);
        // A HEIF header without the image data is an error, not a panic.
        let err = decode_image(&ftyp(b"heic", &[b"mif1"]), &DecodeOptions::default());
        assert!(
            matches!(
                err,
                Err(DecodeError::Corrupt(_) | DecodeError::Unsupported(_))
            ),
            "{err:?}"
        );
    }

    #[test]
    fn png_roundtrip_keeps_pixels() {
        let mut img = RgbImage::new(3, 2);
        img.put_pixel(2, 1, image::Rgb([10, 20, 30]));
        let mut buf = Vec::new();
        img.write_to(&mut Cursor::new(&mut buf), ImageFormat::Png)
            .expect("encode png");
        let out = decode_image(&buf, &DecodeOptions::default()).expect("decode png");
        assert_eq!(out.dimensions(), (3, 2));
        assert_eq!(out.get_pixel(2, 1).0, [10, 20, 30]);
    }
}
