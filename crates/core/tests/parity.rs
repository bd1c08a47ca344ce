//! Parity with InsightFace 0.7.3 (Python) running the same two model files on the same images.
//! Reference values: tests/data/insightface_reference.json, made by
//! scripts/reference/gen_reference.py.

mod common;

use facegroup_core::BBox;
use serde_json::Value;

const MIN_IOU: f32 = 0.95;
const MAX_KPS_PX: f32 = 1.5;
const MIN_COS: f32 = 0.99;

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

#[test]
fn matches_insightface_on_every_test_image() {
    let reference: Value = serde_json::from_str(include_str!("data/insightface_reference.json"))
        .expect("reference JSON");
    let images = reference["images"].as_object().expect("images");
    assert!(
        images.len() >= 8,
        "reference covers {} images",
        images.len()
    );
    // InsightFace's letterbox: the `exact` detection mode.
    let mut pipeline = common::exact_pipeline();
    let (mut worst_iou, mut worst_kps, mut worst_cos) = (1.0f32, 0.0f32, 1.0f32);
    for (name, expected) in images {
        let (img, faces) = pipeline
            .analyze_bytes(&common::image_bytes(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            (img.width() as u64, img.height() as u64),
            (
                expected["width"].as_u64().expect("width"),
                expected["height"].as_u64().expect("height")
            ),
            "{name}: decoded size"
        );
        let ref_faces = expected["faces"].as_array().expect("faces");
        assert_eq!(faces.len(), ref_faces.len(), "{name}: face count");
        let mut used = vec![false; faces.len()];
        for (k, rf) in ref_faces.iter().enumerate() {
            let b = f32s(&rf["bbox"]);
            let rbox = BBox {
                x1: b[0],
                y1: b[1],
                x2: b[2],
                y2: b[3],
            };
            let (best, iou) = faces
                .iter()
                .enumerate()
                .filter(|(i, _)| !used[*i])
                .map(|(i, f)| (i, f.bbox.iou(&rbox)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or_else(|| panic!("{name}: no face left for reference face {k}"));
            used[best] = true;
            let face = &faces[best];
            assert!(iou >= MIN_IOU, "{name} face {k}: IoU {iou}");
            let kps: Vec<f32> = rf["kps"]
                .as_array()
                .expect("kps")
                .iter()
                .flat_map(f32s)
                .collect();
            let kps_err = face
                .landmarks
                .iter()
                .enumerate()
                .map(|(j, p)| {
                    ((p[0] - kps[2 * j]).powi(2) + (p[1] - kps[2 * j + 1]).powi(2)).sqrt()
                })
                .fold(0.0f32, f32::max);
            assert!(
                kps_err <= MAX_KPS_PX,
                "{name} face {k}: keypoints off by {kps_err} px"
            );
            let c = common::cos(&face.embedding, &f32s(&rf["embedding"]));
            assert!(c >= MIN_COS, "{name} face {k}: embedding cosine {c}");
            worst_iou = worst_iou.min(iou);
            worst_kps = worst_kps.max(kps_err);
            worst_cos = worst_cos.min(c);
        }
    }
    eprintln!("parity: worst IoU {worst_iou:.4}, worst keypoint error {worst_kps:.3} px, worst cosine {worst_cos:.5}");
}
