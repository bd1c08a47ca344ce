//! Greedy non-maximum suppression, InsightFace's variant (box sides counted as `x2 - x1 + 1`).

use super::Detection;

/// Keeps the best-scoring detections, dropping any whose IoU with a kept one exceeds
/// `threshold`. Returns them best first; ties keep their input order so results are stable.
pub fn nms(mut dets: Vec<Detection>, threshold: f32) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let areas: Vec<f32> = dets
        .iter()
        .map(|d| (d.bbox.x2 - d.bbox.x1 + 1.0) * (d.bbox.y2 - d.bbox.y1 + 1.0))
        .collect();
    let mut suppressed = vec![false; dets.len()];
    let mut keep = Vec::new();
    for i in 0..dets.len() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let a = dets[i].bbox;
        for j in i + 1..dets.len() {
            if suppressed[j] {
                continue;
            }
            let b = dets[j].bbox;
            let w = (a.x2.min(b.x2) - a.x1.max(b.x1) + 1.0).max(0.0);
            let h = (a.y2.min(b.y2) - a.y1.max(b.y1) + 1.0).max(0.0);
            let inter = w * h;
            let iou = inter / (areas[i] + areas[j] - inter);
            if iou > threshold {
                suppressed[j] = true;
            }
        }
    }
    let mut slots: Vec<Option<Detection>> = dets.into_iter().map(Some).collect();
    keep.into_iter().filter_map(|i| slots[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::BBox;

    fn det(x1: f32, y1: f32, x2: f32, y2: f32, score: f32) -> Detection {
        Detection {
            bbox: BBox { x1, y1, x2, y2 },
            score,
            landmarks: None,
        }
    }

    #[test]
    fn suppresses_overlaps_and_keeps_separate_faces() {
        let out = nms(
            vec![
                det(0.0, 0.0, 10.0, 10.0, 0.8),
                det(1.0, 1.0, 11.0, 11.0, 0.9),
                det(50.0, 50.0, 60.0, 60.0, 0.7),
            ],
            0.4,
        );
        let scores: Vec<f32> = out.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.7]);
    }

    #[test]
    fn low_overlap_survives() {
        let out = nms(
            vec![
                det(0.0, 0.0, 10.0, 10.0, 0.9),
                det(8.0, 0.0, 18.0, 10.0, 0.8),
            ],
            0.4,
        );
        assert_eq!(out.len(), 2);
    }
}
