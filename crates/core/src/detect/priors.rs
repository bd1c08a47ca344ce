//! Anchor centres of SCRFD's feature maps.

/// Centres `(x, y)` in input pixels of every anchor of a stride's feature map, row-major, each
/// centre repeated once per anchor (InsightFace's order: `mgrid[:h, :w][::-1] * stride`).
pub fn anchor_centers(input_w: u32, input_h: u32, stride: u32, anchors: usize) -> Vec<[f32; 2]> {
    let (fw, fh) = (input_w / stride, input_h / stride);
    let mut out = Vec::with_capacity((fw * fh) as usize * anchors);
    for y in 0..fh {
        for x in 0..fw {
            let c = [(x * stride) as f32, (y * stride) as f32];
            out.extend(std::iter::repeat_n(c, anchors));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centres_are_row_major_and_repeated() {
        let c = anchor_centers(64, 32, 32, 2);
        assert_eq!(c, vec![[0.0, 0.0], [0.0, 0.0], [32.0, 0.0], [32.0, 0.0]]);
        assert_eq!(anchor_centers(640, 640, 8, 2).len(), 80 * 80 * 2);
    }
}
