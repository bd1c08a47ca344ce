//! The pipeline on real photos: face counts, identity similarity, EXIF rotation, HEIC/AVIF
//! (made from the sample JPEGs at test time with Debian's `heif-enc`), bad input and quality
//! measures that must move the right way.

mod common;

use std::io::Cursor;
use std::path::Path;

use facegroup_core::{
    decode_image, DecodeError, DecodeOptions, Error, ExecutionProvider, FaceDetector, ModelError,
    Pipeline, RgbImage, Scrfd,
};
use image::ImageFormat;

fn faces_in(pipeline: &mut Pipeline, name: &str) -> Vec<facegroup_core::Face> {
    pipeline
        .analyze_bytes(&common::image_bytes(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .1
}

#[test]
fn group_photos_give_the_known_face_counts() {
    let mut p = common::pipeline();
    assert_eq!(faces_in(&mut p, "t1.jpg").len(), 6);
    assert_eq!(faces_in(&mut p, "players.jpg").len(), 22);
}

/// `fast` detection (padded to a multiple of 32, small photos enlarged at most 2x) finds the
/// faces `exact` (InsightFace's 640x640 letterbox) finds, at the same places, with embeddings
/// of the same person.
#[test]
fn fast_detection_finds_the_faces_exact_detection_finds() {
    let (mut fast, mut exact) = (common::pipeline(), common::exact_pipeline());
    let mut names: Vec<String> = std::fs::read_dir(facegroup_testkit::images_dir())
        .expect("sample photos")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".jpg"))
        .collect();
    names.sort();
    assert!(names.len() >= 8);
    let (mut matched, mut worst_iou, mut worst_cos) = (0usize, 1.0f32, 1.0f32);
    for name in &names {
        let (a, b) = (faces_in(&mut fast, name), faces_in(&mut exact, name));
        // A face near the score threshold may flip; every confident one must match.
        for e in b.iter().filter(|e| e.score >= 0.6) {
            let (iou, f) = a
                .iter()
                .map(|f| (f.bbox.iou(&e.bbox), f))
                .max_by(|x, y| x.0.total_cmp(&y.0))
                .unwrap_or_else(|| panic!("{name}: fast found no face"));
            assert!(iou > 0.8, "{name}: face {:?} IoU {iou}", e.bbox);
            worst_iou = worst_iou.min(iou);
            worst_cos = worst_cos.min(common::cos(&f.embedding, &e.embedding));
            matched += 1;
        }
        let diff = a.len().abs_diff(b.len());
        assert!(
            diff <= 1 + b.len() / 10,
            "{name}: fast {} vs exact {} faces",
            a.len(),
            b.len()
        );
    }
    assert!(matched >= 30, "{matched} faces compared");
    assert!(
        worst_cos > 0.8,
        "worst embedding cosine {worst_cos}, IoU {worst_iou}"
    );
}

#[test]
fn same_person_is_close_and_different_person_is_far() {
    let mut p = common::pipeline();
    let emb = |p: &mut Pipeline, n: &str| {
        let faces = faces_in(p, n);
        assert_eq!(faces.len(), 1, "{n}");
        faces[0].embedding.clone()
    };
    let obama = [
        emb(&mut p, "obama.jpg"),
        emb(&mut p, "obama2.jpg"),
        emb(&mut p, "obama3.jpg"),
    ];
    let biden = emb(&mut p, "biden.jpg");
    for e in &obama {
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "embedding norm {norm}");
        assert_eq!(e.len(), 512);
        let c = common::cos(e, &biden);
        assert!(c < 0.35, "obama vs biden cosine {c}");
    }
    for i in 0..3 {
        for j in i + 1..3 {
            let c = common::cos(&obama[i], &obama[j]);
            assert!(c >= 0.5, "obama {i} vs {j} cosine {c}");
        }
    }
}

#[test]
fn exif_rotated_photo_is_turned_upright() {
    let bytes = common::image_bytes("obama.jpg");
    let upright = decode_image(&bytes, &DecodeOptions::default()).expect("decode");
    // Orientation 6 means "rotate 90 degrees clockwise to display", so the stored pixels are
    // the upright photo turned 90 degrees counter-clockwise, as a phone held sideways saves it.
    let stored = image::imageops::rotate270(&upright);
    let rotated = with_exif_orientation(&encode_jpeg(&stored), 6);

    let decoded = decode_image(&rotated, &DecodeOptions::default()).expect("decode rotated");
    assert_eq!(decoded.dimensions(), upright.dimensions());

    let mut p = common::pipeline();
    let original = p.analyze(&upright).expect("analyze upright");
    let (_, faces) = p.analyze_bytes(&rotated).expect("analyze rotated");
    assert_eq!(faces.len(), 1);
    let c = common::cos(&faces[0].embedding, &original[0].embedding);
    assert!(c >= 0.98, "rotated copy cosine {c}");

    // Without the EXIF tag the sideways photo is what a naive decoder sees.
    let sideways = p.analyze(&stored).expect("analyze sideways");
    let best = sideways
        .iter()
        .map(|f| common::cos(&f.embedding, &original[0].embedding))
        .fold(-1.0f32, f32::max);
    assert!(
        best < 0.98,
        "sideways copy should not embed like the upright face ({best})"
    );
}

fn has_box(bytes: &[u8], kind: &[u8; 4]) -> bool {
    bytes.windows(4).any(|w| w == kind)
}

#[test]
fn heic_and_avif_photos_give_the_same_face_as_the_jpeg() {
    let dir = facegroup_testkit::TempDir::new("heif");
    let jpeg = common::image_bytes("obama.jpg");
    let opts = DecodeOptions::default();
    let upright = decode_image(&jpeg, &opts).expect("decode jpeg");
    let mut p = common::pipeline();
    let original = p.analyze(&upright).expect("analyze jpeg");
    assert_eq!(original.len(), 1);
    for (name, args, brand) in [
        ("obama.heic", &[][..], *b"heic"),
        ("obama.avif", &["-A"][..], *b"avif"),
    ] {
        let bytes = facegroup_testkit::heif_enc(&jpeg, &dir.path().join(name), args);
        // Told apart by content (ftyp brands), not by the name.
        assert_eq!(facegroup_core::decode::heif_brand(&bytes), Some(brand));
        let decoded = decode_image(&bytes, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(decoded.dimensions(), upright.dimensions(), "{name}");
        let (_, faces) = p.analyze_bytes(&bytes).expect("analyze heif");
        assert_eq!(faces.len(), 1, "{name}");
        let c = common::cos(&faces[0].embedding, &original[0].embedding);
        assert!(c >= 0.98, "{name}: cosine {c} against the JPEG's face");
    }
    // The pixel limit is checked from the HEIF header too.
    let heic = std::fs::read(dir.path().join("obama.heic")).expect("heic");
    let small = DecodeOptions {
        max_pixels: 1000,
        ..opts
    };
    match decode_image(&heic, &small) {
        Err(DecodeError::TooLarge { width, height, .. }) => {
            assert_eq!((width, height), upright.dimensions())
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // A cut-off HEIC is a clear error, not a panic.
    let cut = &heic[..heic.len() / 2];
    assert!(matches!(
        decode_image(cut, &opts),
        Err(DecodeError::Corrupt(_))
    ));
}

/// Both ways a HEIF file says "turn me": libheif's own transform (`irot`, with the camera's
/// EXIF orientation left in the file, as iPhones write it) and, in a file without transforms,
/// only the EXIF tag (what heif-enc 1.15 makes of a rotated JPEG). Each is turned upright
/// exactly once: applied twice the photo would come out sideways (swapped dimensions).
#[test]
fn rotated_heic_is_turned_upright_once() {
    let dir = facegroup_testkit::TempDir::new("heif-rot");
    let opts = DecodeOptions::default();
    let upright = decode_image(&common::image_bytes("obama.jpg"), &opts).expect("decode");
    // Orientation 6: the stored pixels are the upright photo turned 90 degrees counter-clockwise.
    let stored = image::imageops::rotate270(&upright);
    let mut p = common::pipeline();
    let original = p.analyze(&upright).expect("analyze upright");

    let exif_only = facegroup_testkit::heif_enc(
        &with_exif_orientation(&encode_jpeg(&stored), 6),
        &dir.path().join("exif-only.heic"),
        &[],
    );
    assert!(!has_box(&exif_only, b"irot"), "heif-enc wrote a transform");
    let irot = encode_heic_with_irot(dir.path(), &stored);
    assert!(has_box(&irot, b"irot"));

    for (name, bytes) in [("exif-only", &exif_only), ("irot+exif", &irot)] {
        let decoded = decode_image(bytes, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(decoded.dimensions(), upright.dimensions(), "{name}");
        let faces = p.analyze(&decoded).expect("analyze");
        assert_eq!(faces.len(), 1, "{name}");
        let c = common::cos(&faces[0].embedding, &original[0].embedding);
        assert!(c >= 0.98, "{name}: cosine {c} against the upright face");
    }
}

/// Encodes `stored` as HEIC through libheif's C API with `irot` saying "rotate 90 degrees
/// clockwise to display" and an EXIF block saying the same (orientation 6).
fn encode_heic_with_irot(dir: &Path, stored: &RgbImage) -> Vec<u8> {
    use libheif_sys as lh;
    fn ok(e: lh::heif_error, what: &str) {
        assert_eq!(e.code, lh::heif_error_code_heif_error_Ok, "{what}");
    }
    let (w, h) = stored.dimensions();
    let path = dir.join("irot.heic");
    let exif = exif_tiff(6);
    // SAFETY: every pointer comes from libheif and is checked before use; the plane is written
    // within its stride x height; everything allocated is released below.
    unsafe {
        let ctx = lh::heif_context_alloc();
        assert!(!ctx.is_null());
        let mut enc = std::ptr::null_mut();
        ok(
            lh::heif_context_get_encoder_for_format(
                ctx,
                lh::heif_compression_format_heif_compression_HEVC,
                &mut enc,
            ),
            "HEVC encoder",
        );
        ok(lh::heif_encoder_set_lossy_quality(enc, 90), "quality");
        let mut img = std::ptr::null_mut();
        ok(
            lh::heif_image_create(
                w as i32,
                h as i32,
                lh::heif_colorspace_heif_colorspace_RGB,
                lh::heif_chroma_heif_chroma_interleaved_RGB,
                &mut img,
            ),
            "image",
        );
        let channel = lh::heif_channel_heif_channel_interleaved;
        ok(
            lh::heif_image_add_plane(img, channel, w as i32, h as i32, 8),
            "plane",
        );
        let mut stride = 0;
        let plane = lh::heif_image_get_plane(img, channel, &mut stride);
        assert!(!plane.is_null());
        for (y, row) in stored.as_raw().chunks_exact(w as usize * 3).enumerate() {
            let dst = plane.add(y * stride as usize);
            std::ptr::copy_nonoverlapping(row.as_ptr(), dst, row.len());
        }
        let options = lh::heif_encoding_options_alloc();
        (*options).image_orientation = lh::heif_orientation_heif_orientation_rotate_90_cw;
        let mut handle = std::ptr::null_mut();
        ok(
            lh::heif_context_encode_image(ctx, img, enc, options, &mut handle),
            "encode",
        );
        ok(
            lh::heif_context_add_exif_metadata(
                ctx,
                handle,
                exif.as_ptr().cast(),
                exif.len() as i32,
            ),
            "exif",
        );
        let cpath = std::ffi::CString::new(path.to_str().expect("utf-8 path")).expect("path");
        ok(lh::heif_context_write_to_file(ctx, cpath.as_ptr()), "write");
        lh::heif_image_handle_release(handle);
        lh::heif_encoding_options_free(options);
        lh::heif_image_release(img);
        lh::heif_encoder_release(enc);
        lh::heif_context_free(ctx);
    }
    std::fs::read(&path).expect("read irot.heic")
}

#[test]
fn truncated_jpeg_is_a_clear_error() {
    let bytes = common::image_bytes("obama.jpg");
    let cut = &bytes[..bytes.len() / 2];
    match decode_image(cut, &DecodeOptions::default()) {
        Err(DecodeError::Corrupt(msg)) => assert!(msg.contains("truncated"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let mut p = common::pipeline();
    let err = p.analyze_bytes(cut).expect_err("truncated input must fail");
    assert!(err.is_bad_input());
    assert!(matches!(err, Error::Decode(_)));
}

#[test]
fn decompression_bomb_header_is_refused_before_allocating() {
    let png = png_header(100_000, 100_000);
    match decode_image(&png, &DecodeOptions::default()) {
        Err(DecodeError::TooLarge {
            width: 100_000,
            height: 100_000,
            ..
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn blur_lowers_sharpness_and_darkening_lowers_brightness() {
    let img =
        decode_image(&common::image_bytes("obama.jpg"), &DecodeOptions::default()).expect("decode");
    let mut p = common::pipeline();
    let base = &p.analyze(&img).expect("analyze")[0].quality;

    let blurred = image::imageops::blur(&img, 4.0);
    let q_blur = &p.analyze(&blurred).expect("analyze blurred")[0].quality;
    assert!(
        q_blur.sharpness < base.sharpness * 0.5,
        "blurred sharpness {} vs original {}",
        q_blur.sharpness,
        base.sharpness
    );

    let mut dark = img.clone();
    for px in dark.pixels_mut() {
        px.0 = px.0.map(|v| (f32::from(v) * 0.3) as u8);
    }
    let q_dark = &p.analyze(&dark).expect("analyze dark")[0].quality;
    assert!(
        q_dark.brightness < base.brightness * 0.5,
        "dark brightness {} vs original {}",
        q_dark.brightness,
        base.brightness
    );
    assert!(q_dark
        .reasons
        .contains(&facegroup_core::QualityReason::LowBrightness));
    assert!(
        base.passes(),
        "obama.jpg should pass quality: {:?}",
        base.reasons
    );
}

#[test]
fn batching_across_images_gives_the_same_faces() {
    let opts = DecodeOptions::default();
    let a = decode_image(&common::image_bytes("obama.jpg"), &opts).expect("decode");
    let b = decode_image(&common::image_bytes("t1.jpg"), &opts).expect("decode");
    let mut p = common::pipeline();
    let batched = p.analyze_batch(&[&a, &b]).expect("batch");
    let single = [p.analyze(&a).expect("a"), p.analyze(&b).expect("b")];
    for (bf, sf) in batched.iter().zip(&single) {
        assert_eq!(bf.len(), sf.len());
        for (x, y) in bf.iter().zip(sf) {
            assert!(common::cos(&x.embedding, &y.embedding) > 0.9999);
        }
    }
}

#[test]
fn unbatched_detector_layout_gives_the_same_detections() {
    // The same SCRFD network with its batch axis squeezed away, i.e. the [A, C] output layout
    // of InsightFace's buffalo packs; scripts/setup.sh makes it with the `onnx` package.
    let squeezed = common::repo_root().join("testdata/models/scrfd_500m_bnkps_unbatched.onnx");
    assert!(
        squeezed.is_file(),
        "{} missing: run scripts/setup.sh",
        squeezed.display()
    );
    let cfg = common::config();
    let mut batched = Scrfd::new(cfg.detector.clone(), &cfg.runtime).expect("batched model");
    let mut unbatched_cfg = cfg.detector.clone();
    unbatched_cfg.model_path = squeezed;
    let mut unbatched = Scrfd::new(unbatched_cfg, &cfg.runtime).expect("unbatched model");
    assert_ne!(batched.layout().rank, unbatched.layout().rank);
    let img =
        decode_image(&common::image_bytes("t1.jpg"), &DecodeOptions::default()).expect("decode");
    let a = batched.detect(&img).expect("detect");
    let b = unbatched.detect(&img).expect("detect");
    assert_eq!(a.len(), 6);
    assert_eq!(a, b);
}

#[test]
fn cuda_requested_on_a_cpu_only_runtime_fails_loudly() {
    let mut cfg = common::config();
    cfg.runtime.provider = ExecutionProvider::Cuda { device_id: 0 };
    match Pipeline::new(&cfg) {
        Err(ModelError::ExecutionProvider { provider, .. }) => assert_eq!(provider, "cuda:0"),
        Err(other) => panic!("expected an execution-provider error, got {other}"),
        Ok(_) => panic!("CUDA must not silently fall back to CPU"),
    }
}

#[test]
fn missing_model_names_the_file() {
    let mut cfg = common::config();
    cfg.detector.model_path = "models/does-not-exist.onnx".into();
    match Pipeline::new(&cfg) {
        Err(ModelError::ModelMissing { path }) => {
            assert!(path.ends_with("does-not-exist.onnx"))
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a missing model must fail"),
    }
}

fn encode_jpeg(img: &RgbImage) -> Vec<u8> {
    let mut buf = Vec::new();
    img.write_to(&mut Cursor::new(&mut buf), ImageFormat::Jpeg)
        .expect("encode jpeg");
    buf
}

/// Inserts a minimal EXIF APP1 segment holding only the Orientation tag after the SOI marker.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&exif_tiff(orientation));
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A TIFF (EXIF) block holding only the Orientation tag.
fn exif_tiff(orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0\x2a\0\0\0\x08"); // big-endian, IFD at offset 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    tiff
}

/// A PNG signature and IHDR chunk claiming `w x h` RGB pixels, with no image data.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    out.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
