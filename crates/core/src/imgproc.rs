//! Pixel operations that must match OpenCV's, because InsightFace's reference pipeline (and so
//! the models' training-time preprocessing) uses `cv2.resize` and `cv2.warpAffine`.

use image::RgbImage;

/// Bilinear resize with OpenCV's `INTER_LINEAR` conventions: pixel centres at +0.5, source
/// coordinates clamped to the edge, no antialiasing when shrinking.
pub fn resize_bilinear(src: &RgbImage, dst_w: u32, dst_h: u32) -> RgbImage {
    let mut dst = RgbImage::new(dst_w, dst_h);
    let row_len = dst_w as usize * 3;
    let out = dst.as_mut();
    resize_bilinear_rows(src, dst_w, dst_h, |y, row| {
        out[y * row_len..(y + 1) * row_len].copy_from_slice(row);
    });
    dst
}

/// [`resize_bilinear`], handing each destination row (RGB bytes) to `emit(y, row)` in order
/// instead of building an image, so a caller that converts the pixels anyway (the detector's
/// float blob) makes one pass.
///
/// Separable: each source row that a destination row needs is interpolated horizontally once
/// (and reused by the next destination row when they share it), then two such rows are blended.
/// The arithmetic is the same as interpolating each pixel from its four neighbours (`top` and
/// `bottom` are those rows' horizontal results), so the output is identical; it is just not
/// recomputed per pixel.
pub fn resize_bilinear_rows(
    src: &RgbImage,
    dst_w: u32,
    dst_h: u32,
    mut emit: impl FnMut(usize, &[u8]),
) {
    let (sw, sh) = src.dimensions();
    if sw == 0 || sh == 0 || dst_w == 0 || dst_h == 0 {
        return;
    }
    // Horizontal taps per output byte: the two source bytes and the second one's weight.
    let taps: Vec<(usize, usize, f32)> = axis_taps(sw, dst_w)
        .into_iter()
        .flat_map(|(x0, x1, f)| (0..3).map(move |c| (x0 * 3 + c, x1 * 3 + c, f)))
        .collect();
    let s = src.as_raw();
    let stride = sw as usize * 3;
    let horizontal = |y: usize, out: &mut [f32]| {
        let row = &s[y * stride..(y + 1) * stride];
        for (o, &(i0, i1, f)) in out.iter_mut().zip(&taps) {
            let (a, b) = (f32::from(row[i0]), f32::from(row[i1]));
            *o = a + (b - a) * f;
        }
    };
    let n = taps.len();
    // Two interpolated source rows, with the source row index each holds.
    let mut rows = [(usize::MAX, vec![0.0f32; n]), (usize::MAX, vec![0.0f32; n])];
    let mut line = vec![0u8; n];
    for (dy, (y0, y1, fy)) in axis_taps(sh, dst_h).into_iter().enumerate() {
        let top = row_slot(&mut rows, y0, y1, &horizontal);
        let bottom = row_slot(&mut rows, y1, y0, &horizontal);
        let (t, b) = (&rows[top].1, &rows[bottom].1);
        for ((o, &t), &b) in line.iter_mut().zip(t).zip(b) {
            *o = round_u8(t + (b - t) * fy);
        }
        emit(dy, &line);
    }
}

/// The slot of `rows` holding source row `need`, filling the one not holding `keep` if neither
/// does.
fn row_slot(
    rows: &mut [(usize, Vec<f32>); 2],
    need: usize,
    keep: usize,
    fill: &impl Fn(usize, &mut [f32]),
) -> usize {
    if let Some(i) = rows.iter().position(|r| r.0 == need) {
        return i;
    }
    let i = usize::from(rows[0].0 == keep);
    fill(need, &mut rows[i].1);
    rows[i].0 = need;
    i
}

/// For each destination index along one axis: the two source indices and the weight of the
/// second one.
fn axis_taps(src_len: u32, dst_len: u32) -> Vec<(usize, usize, f32)> {
    let scale = f64::from(src_len) / f64::from(dst_len);
    let last = src_len as usize - 1;
    (0..dst_len)
        .map(|d| {
            let pos = (f64::from(d) + 0.5) * scale - 0.5;
            let f0 = pos.floor();
            let frac = (pos - f0) as f32;
            let i0 = f0 as i64;
            if i0 < 0 {
                (0, 0, 0.0)
            } else if i0 as usize >= last {
                (last, last, 0.0)
            } else {
                (i0 as usize, i0 as usize + 1, frac)
            }
        })
        .collect()
}

/// `cv2.warpAffine(src, m, (w, h), flags=INTER_LINEAR, borderValue=0)`: `m` maps source to
/// destination coordinates; each destination pixel samples the source at `m^-1 (x, y)`, and
/// neighbours outside the source read as black.
pub fn warp_affine_bilinear(src: &RgbImage, m: &[[f32; 3]; 2], w: u32, h: u32) -> RgbImage {
    let inv = invert_affine(m);
    let (sw, sh) = (src.width() as i64, src.height() as i64);
    let s = src.as_raw();
    let mut dst = RgbImage::new(w, h);
    let out = dst.as_mut();
    let sample = |x: i64, y: i64, c: usize| -> f32 {
        if x < 0 || y < 0 || x >= sw || y >= sh {
            0.0
        } else {
            f32::from(s[((y * sw + x) * 3) as usize + c])
        }
    };
    for dy in 0..h {
        for dx in 0..w {
            let (fx, fy) = (dx as f32, dy as f32);
            let sx = inv[0][0] * fx + inv[0][1] * fy + inv[0][2];
            let sy = inv[1][0] * fx + inv[1][1] * fy + inv[1][2];
            let x0 = sx.floor();
            let y0 = sy.floor();
            let (ax, ay) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let o = ((dy * w + dx) * 3) as usize;
            for c in 0..3 {
                let top = sample(x0, y0, c) * (1.0 - ax) + sample(x0 + 1, y0, c) * ax;
                let bot = sample(x0, y0 + 1, c) * (1.0 - ax) + sample(x0 + 1, y0 + 1, c) * ax;
                out[o + c] = round_u8(top * (1.0 - ay) + bot * ay);
            }
        }
    }
    dst
}

/// Inverse of a 2x3 affine matrix. A degenerate matrix (zero scale) maps everything to the origin
/// rather than producing NaNs.
pub fn invert_affine(m: &[[f32; 3]; 2]) -> [[f32; 3]; 2] {
    let (a, b, c) = (m[0][0], m[0][1], m[0][2]);
    let (d, e, f) = (m[1][0], m[1][1], m[1][2]);
    let det = a * e - b * d;
    if det.abs() < f32::EPSILON {
        return [[0.0; 3]; 2];
    }
    let (ia, ib, id, ie) = (e / det, -b / det, -d / det, a / det);
    [[ia, ib, -(ia * c + ib * f)], [id, ie, -(id * c + ie * f)]]
}

/// `v.round().clamp(0.0, 255.0) as u8` without `round`, which baseline x86-64 (no SSE4.1) turns
/// into a library call per byte. Exact: `v as i32` truncates, `v - t` is exact, and a fraction
/// of at least one half rounds away from zero as `round` does; a tiny negative `v` (rounding in
/// the interpolation) truncates to 0 with a negative fraction, as `round` gives -0.
fn round_u8(v: f32) -> u8 {
    let t = v as i32;
    let r = t + i32::from(v - t as f32 >= 0.5);
    r.clamp(0, 255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_identity_and_constant() {
        let mut img = RgbImage::new(4, 3);
        for (i, p) in img.pixels_mut().enumerate() {
            *p = image::Rgb([i as u8 * 10, 7, 200]);
        }
        assert_eq!(resize_bilinear(&img, 4, 3), img);
        let flat = RgbImage::from_pixel(9, 5, image::Rgb([33, 66, 99]));
        let small = resize_bilinear(&flat, 4, 2);
        assert!(small.pixels().all(|p| p.0 == [33, 66, 99]));
    }

    #[test]
    fn round_u8_rounds_like_round() {
        let mut v = -2.0f32;
        while v < 258.0 {
            for x in [v, v.next_up(), v.next_down()] {
                assert_eq!(round_u8(x), x.round().clamp(0.0, 255.0) as u8, "{x}");
            }
            v += 0.125;
        }
    }

    #[test]
    fn separable_resize_matches_four_neighbour_interpolation() {
        let img = RgbImage::from_fn(37, 23, |x, y| {
            image::Rgb([(x * 7 + y * 3) as u8, (x * y) as u8, (255 - x * 5) as u8])
        });
        for (w, h) in [(64, 40), (20, 11), (37, 23), (5, 50)] {
            let fast = resize_bilinear(&img, w, h);
            let xs = axis_taps(37, w);
            let ys = axis_taps(23, h);
            for (dy, &(y0, y1, fy)) in ys.iter().enumerate() {
                for (dx, &(x0, x1, fx)) in xs.iter().enumerate() {
                    for c in 0..3 {
                        let p =
                            |x: usize, y: usize| f32::from(img.get_pixel(x as u32, y as u32).0[c]);
                        let top = p(x0, y0) + (p(x1, y0) - p(x0, y0)) * fx;
                        let bot = p(x0, y1) + (p(x1, y1) - p(x0, y1)) * fx;
                        let want = (top + (bot - top) * fy).round().clamp(0.0, 255.0) as u8;
                        assert_eq!(fast.get_pixel(dx as u32, dy as u32).0[c], want);
                    }
                }
            }
        }
    }

    #[test]
    fn resize_halves_by_averaging_pairs() {
        // Halving: each output sample sits exactly between two source pixels.
        let img = RgbImage::from_fn(4, 1, |x, _| image::Rgb([(x * 40) as u8, 0, 0]));
        let half = resize_bilinear(&img, 2, 1);
        assert_eq!(half.get_pixel(0, 0).0[0], 20);
        assert_eq!(half.get_pixel(1, 0).0[0], 100);
    }

    #[test]
    fn warp_translation_shifts_pixels_and_fills_black() {
        let img = RgbImage::from_fn(5, 5, |x, y| image::Rgb([(x * 10 + y) as u8, 1, 2]));
        // dst = src + (1, 2)
        let m = [[1.0, 0.0, 1.0], [0.0, 1.0, 2.0]];
        let out = warp_affine_bilinear(&img, &m, 5, 5);
        assert_eq!(out.get_pixel(1, 2).0, img.get_pixel(0, 0).0);
        assert_eq!(out.get_pixel(4, 4).0, img.get_pixel(3, 2).0);
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
    }

    #[test]
    fn affine_inverse_roundtrips() {
        let m = [[0.8, -0.3, 12.0], [0.3, 0.8, -4.0]];
        let inv = invert_affine(&m);
        let (x, y) = (17.0f32, 5.0f32);
        let u = m[0][0] * x + m[0][1] * y + m[0][2];
        let v = m[1][0] * x + m[1][1] * y + m[1][2];
        let bx = inv[0][0] * u + inv[0][1] * v + inv[0][2];
        let by = inv[1][0] * u + inv[1][1] * v + inv[1][2];
        assert!((bx - x).abs() < 1e-4 && (by - y).abs() < 1e-4);
    }
}
