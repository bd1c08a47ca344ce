//! HEIC/HEIF and AVIF through libheif (`heif` feature).
//!
//! Orientation: HEIF says how to turn the stored pixels upright with its own transform
//! properties (`irot` rotation, `imir` mirror), and libheif applies them (and `clap` crops) when
//! it decodes. Phones that write those also copy the camera's EXIF orientation tag unchanged
//! (an iPhone portrait photo carries `irot` *and* EXIF orientation 6), so applying the EXIF tag
//! as well would turn such a photo twice. The rule here: when the primary image has an
//! `irot` or `imir` property, libheif's transforms are the whole orientation and EXIF is ignored;
//! only a file without either (as converters that predate the transforms write, e.g. libheif
//! 1.15's own `heif-enc` from a rotated JPEG: sideways pixels plus EXIF orientation 6) gets its
//! EXIF orientation applied, exactly as a JPEG would. libheif itself never reads the EXIF tag.

use std::sync::OnceLock;

use image::metadata::Orientation;
use image::{DynamicImage, RgbImage};
use libheif_rs::{ColorSpace, HeifContext, HeifErrorCode, ImageHandle, LibHeif, RgbChroma};

use super::{check_pixels, DecodeOptions};
use crate::error::DecodeError;

/// libheif's process-wide initialisation (`heif_init`), done once and never undone.
fn lib() -> &'static LibHeif {
    static LIB: OnceLock<LibHeif> = OnceLock::new();
    LIB.get_or_init(LibHeif::new)
}

/// Decodes the primary image of a HEIF/AVIF file into upright RGB8.
pub(super) fn decode(bytes: &[u8], opts: &DecodeOptions) -> Result<RgbImage, DecodeError> {
    // Every libheif error is the file's (bad input, permanent): a codec or feature libheif
    // lacks is "unsupported", anything else (including its own security limits) "corrupt".
    let corrupt = |what: &str, e: libheif_rs::HeifError| {
        let msg = format!("HEIF {what}: {:?}: {}", e.code, e.message);
        match e.code {
            HeifErrorCode::UnsupportedFileType | HeifErrorCode::UnsupportedFeature => {
                DecodeError::Unsupported(msg)
            }
            _ => DecodeError::Corrupt(msg),
        }
    };
    let ctx = HeifContext::read_from_bytes(bytes).map_err(|e| corrupt("container", e))?;
    let handle = ctx
        .primary_image_handle()
        .map_err(|e| corrupt("primary image", e))?;
    // The header's size (after rotation, the same pixel count) before any pixel is decoded.
    let (width, height) = (handle.width(), handle.height());
    check_pixels(width, height, opts)?;
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt(format!(
            "image has no pixels ({width}x{height})"
        )));
    }
    // No DecodingOptions: the defaults apply the transforms, and libheif-rs 0.20 frees options
    // passed to `decode` before libheif reads them (fixed in 1.0.1).
    let decoded = lib()
        .decode(&handle, ColorSpace::Rgb(RgbChroma::Rgb), None)
        .map_err(|e| corrupt("image data", e))?;
    let planes = decoded.planes();
    let plane = planes.interleaved.ok_or_else(|| {
        DecodeError::Corrupt("HEIF decoder returned no interleaved RGB plane".into())
    })?;
    if plane.storage_bits_per_pixel != 24 {
        return Err(DecodeError::Unsupported(format!(
            "HEIF decoded to {} bits per pixel, expected 24",
            plane.storage_bits_per_pixel
        )));
    }
    let (w, h) = (plane.width, plane.height);
    let row = w as usize * 3;
    let mut pixels = Vec::with_capacity(row * h as usize);
    for y in 0..h as usize {
        let start = y * plane.stride;
        let line = plane
            .data
            .get(start..start + row)
            .ok_or_else(|| DecodeError::Corrupt("HEIF plane shorter than its size".into()))?;
        pixels.extend_from_slice(line);
    }
    let img = RgbImage::from_raw(w, h, pixels)
        .ok_or_else(|| DecodeError::Corrupt("HEIF plane does not match its size".into()))?;
    match has_transform(bytes) {
        // libheif turned it already; EXIF must not turn it again.
        Some(true) | None => Ok(img),
        Some(false) => match exif_orientation(&handle) {
            Some(o) if o != Orientation::NoTransforms => {
                let mut img = DynamicImage::ImageRgb8(img);
                img.apply_orientation(o);
                Ok(img.into_rgb8())
            }
            _ => Ok(img),
        },
    }
}

/// The EXIF orientation of the image's `Exif` metadata block, if it has a valid one. The block
/// starts with the big-endian offset of the TIFF header from the end of that field.
fn exif_orientation(handle: &ImageHandle) -> Option<Orientation> {
    let mut ids = [0; 4];
    let n = handle.metadata_block_ids(&mut ids, b"Exif");
    ids.iter().take(n).find_map(|&id| {
        let block = handle.metadata(id).ok()?;
        let offset = u32::from_be_bytes(block.get(..4)?.try_into().ok()?) as usize;
        let tiff = block.get(4usize.checked_add(offset)?..)?;
        Orientation::from_exif_chunk(tiff)
            .or_else(|| Orientation::from_exif_chunk(tiff.strip_prefix(b"Exif\0\0")?))
    })
}

/// Whether the primary item has an `irot` or `imir` property (`Some(false)`: neither), read from
/// the `meta` box: `pitm` names the primary item, `iprp/ipma` lists the indices of its
/// properties in `iprp/ipco`. `None` when the boxes cannot be read (libheif read them, so this
/// is a layout this parser does not know; then libheif's decision stands and EXIF is ignored).
pub(super) fn has_transform(bytes: &[u8]) -> Option<bool> {
    let meta = boxes(bytes).find(|(t, _)| t == b"meta")?.1;
    let meta = meta.get(4..)?; // FullBox version and flags
    let pitm = boxes(meta).find(|(t, _)| t == b"pitm")?.1;
    let primary = match *pitm.first()? {
        0 => u32::from(u16::from_be_bytes(pitm.get(4..6)?.try_into().ok()?)),
        _ => u32::from_be_bytes(pitm.get(4..8)?.try_into().ok()?),
    };
    let iprp = boxes(meta).find(|(t, _)| t == b"iprp")?.1;
    let properties: Vec<[u8; 4]> = boxes(boxes(iprp).find(|(t, _)| t == b"ipco")?.1)
        .map(|(t, _)| t)
        .collect();
    for (t, ipma) in boxes(iprp) {
        if &t != b"ipma" {
            continue;
        }
        let version = *ipma.first()?;
        let wide_index = ipma.get(3)? & 1 == 1;
        let mut at = 8usize;
        let count = u32::from_be_bytes(ipma.get(4..8)?.try_into().ok()?);
        for _ in 0..count {
            let item = if version < 1 {
                at += 2;
                u32::from(u16::from_be_bytes(ipma.get(at - 2..at)?.try_into().ok()?))
            } else {
                at += 4;
                u32::from_be_bytes(ipma.get(at - 4..at)?.try_into().ok()?)
            };
            let n = usize::from(*ipma.get(at)?);
            at += 1;
            for _ in 0..n {
                let index = if wide_index {
                    at += 2;
                    usize::from(u16::from_be_bytes(ipma.get(at - 2..at)?.try_into().ok()?) & 0x7FFF)
                } else {
                    at += 1;
                    usize::from(ipma.get(at - 1)? & 0x7F)
                };
                // Index 0 means "no property"; the others count from 1.
                let kind = index.checked_sub(1).and_then(|i| properties.get(i));
                if item == primary && matches!(kind, Some(b"irot" | b"imir")) {
                    return Some(true);
                }
            }
        }
    }
    Some(false)
}

/// The ISOBMFF boxes in `data`, as (type, payload); stops at the first malformed header.
fn boxes(data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let size = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let kind: [u8; 4] = rest.get(4..8)?.try_into().ok()?;
        let (header, size) = match size {
            0 => (8, rest.len()),
            1 => {
                let large = u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?);
                (16, usize::try_from(large).ok()?)
            }
            n => (8, n),
        };
        if size < header || size > rest.len() {
            return None;
        }
        let payload = &rest[header..size];
        rest = &rest[size..];
        Some((kind, payload))
    })
}
