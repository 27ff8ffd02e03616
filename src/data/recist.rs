//! The exact RECIST marks of a binary mask, what a radiologist aims for: the longest chord of
//! the lesion, then the longest chord perpendicular to it (`synth::as_drawn` adds the hand's slip).
//!
//! [`check_recist`] and [`check_window`] are the one geometry check every consumer of marks and
//! windows runs (the DL_info reader, `segment`, the crops, `crf` through `segment --crf`), so a
//! mark the reader would skip is refused everywhere with the same reason.

/// How far (as a fraction of the lesion's size, its longer axis, plus [`CROSS_SLACK_PX`]) the
/// crossing point of the two axes' lines may lie beyond either axis's ends. Readers' hands slip
/// (see `synth::as_drawn`), and in DeepLesion's official test split 3 of 4,927 short axes stop
/// 5-31 px short of a long axis 25-248 px long: still RECIST marks. Two axes that miss each other
/// by more than a quarter of the lesion are not (5 rows of that split, 4 of them flagged
/// Possibly_noisy by NIH, miss by 37-262 px or 49 % of the long axis).
pub const CROSS_SLACK_FRACTION: f32 = 0.25;
pub const CROSS_SLACK_PX: f32 = 2.0;

/// Checks RECIST marks (long axis p1, p2, short axis p3, p4) against a `w` x `h` image: every
/// coordinate finite and on the image (pixel centres 0..=w-1, 0..=h-1), both axes of non-zero
/// length, and the axes crossing (within the slack above). The error says which point or axis.
pub fn check_recist(p: &[[f32; 2]; 4], w: usize, h: usize) -> std::result::Result<(), String> {
    if w == 0 || h == 0 {
        return Err(format!("the image is {w}x{h}, empty"));
    }
    let (wf, hf) = ((w - 1) as f32, (h - 1) as f32);
    for (i, q) in p.iter().enumerate() {
        if !(q[0].is_finite() && q[1].is_finite()) {
            return Err(format!("point p{} = ({}, {}) is not finite", i + 1, q[0], q[1]));
        }
        if !(q[0] >= 0.0 && q[0] <= wf && q[1] >= 0.0 && q[1] <= hf) {
            let why = if q[0] < 0.0 || q[1] < 0.0 { "negative, " } else { "" };
            return Err(format!("point p{} = ({}, {}) {why}outside the {w}x{h} image", i + 1, q[0], q[1]));
        }
    }
    let d1 = [p[1][0] - p[0][0], p[1][1] - p[0][1]];
    let d2 = [p[3][0] - p[2][0], p[3][1] - p[2][1]];
    let (l1, l2) = (d1[0].hypot(d1[1]), d2[0].hypot(d2[1]));
    if l1 < 1e-3 {
        return Err("degenerate RECIST: long axis has zero length".into());
    }
    if l2 < 1e-3 {
        return Err("degenerate RECIST: short axis has zero length".into());
    }
    // Lines p1 + t d1 and p3 + u d2 meet where t and u solve a 2x2 system.
    let denom = d1[0] * d2[1] - d1[1] * d2[0];
    if denom.abs() < 1e-3 * l1 * l2 {
        return Err("the long and short axes are parallel: they do not cross".into());
    }
    let r = [p[2][0] - p[0][0], p[2][1] - p[0][1]];
    let t = (r[0] * d2[1] - r[1] * d2[0]) / denom;
    let u = (r[0] * d1[1] - r[1] * d1[0]) / denom;
    let slack_px = CROSS_SLACK_FRACTION * l1.max(l2) + CROSS_SLACK_PX;
    let within = |s: f32, len: f32| s >= -slack_px / len && s <= 1.0 + slack_px / len;
    if !(within(t, l1) && within(u, l2)) {
        let at = [p[0][0] + t * d1[0], p[0][1] + t * d1[1]];
        return Err(format!(
            "the long axis p1-p2 and the short axis p3-p4 do not cross (their lines meet at ({:.1}, {:.1}), off {})",
            at[0],
            at[1],
            if within(t, l1) { "the short axis" } else { "the long axis" }
        ));
    }
    Ok(())
}

/// Parses `n` comma-separated finite numbers given as `what` (a flag or column name, for the
/// message).
pub fn parse_numbers(what: &str, s: &str, n: usize) -> std::result::Result<Vec<f32>, String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|t| t.trim().parse::<f32>().map_err(|e| format!("{what}: '{}' is not a number ({e})", t.trim())))
        .collect::<std::result::Result<_, _>>()?;
    if v.len() != n || v.iter().any(|x| !x.is_finite()) {
        return Err(format!("{what}: expected {n} finite comma-separated numbers, got {} in '{s}'", v.len()));
    }
    Ok(v)
}

/// Parses RECIST marks "x1,y1,x2,y2,x3,y3,x4,y4" (long axis p1, p2, then short axis p3, p4).
/// Only the syntax: [`check_recist`] checks them against the image.
pub fn parse_recist(what: &str, s: &str) -> std::result::Result<[[f32; 2]; 4], String> {
    let v = parse_numbers(what, s, 8)?;
    Ok([[v[0], v[1]], [v[2], v[3]], [v[4], v[5]], [v[6], v[7]]])
}

/// Parses and checks an HU window "lo,hi".
pub fn parse_window(what: &str, s: &str) -> std::result::Result<[f32; 2], String> {
    let v = parse_numbers(what, s, 2)?;
    check_window([v[0], v[1]]).map_err(|why| format!("{what}: {why}"))?;
    Ok([v[0], v[1]])
}

/// Checks an HU window [lo, hi]: both finite and lo < hi (a reversed or empty window would
/// divide by zero or invert the image in `slice::window_unit`).
pub fn check_window(w: [f32; 2]) -> std::result::Result<(), String> {
    if !(w[0].is_finite() && w[1].is_finite()) {
        return Err(format!("window [{}, {}] is not finite", w[0], w[1]));
    }
    if w[0] > w[1] {
        return Err(format!("window [{}, {}] is reversed (lo > hi)", w[0], w[1]));
    }
    if w[0] == w[1] {
        return Err(format!("window [{}, {}] is empty (lo = hi)", w[0], w[1]));
    }
    Ok(())
}

/// RECIST points (long axis p1, p2, short axis p3, p4) at pixel centres of the mask's outermost
/// pixels, or None when the mask has fewer than two pixels across in either direction.
pub fn recist_from_mask(mask: &[u8], w: usize, h: usize) -> Option<[[f32; 2]; 4]> {
    let inside = |x: isize, y: isize| {
        x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h && mask[y as usize * w + x as usize] != 0
    };
    let mut pixels = Vec::new();
    let mut boundary = Vec::new();
    for y in 0..h as isize {
        for x in 0..w as isize {
            if inside(x, y) {
                pixels.push([x as f32, y as f32]);
                if !(inside(x - 1, y) && inside(x + 1, y) && inside(x, y - 1) && inside(x, y + 1)) {
                    boundary.push([x as f32, y as f32]);
                }
            }
        }
    }
    if pixels.len() < 2 {
        return None;
    }
    // Longest chord: the farthest pair of convex hull vertices.
    let hull = convex_hull(boundary);
    let (mut p1, mut p2, mut best) = (hull[0], hull[0], -1.0f32);
    for (i, a) in hull.iter().enumerate() {
        for b in &hull[i + 1..] {
            let d = (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2);
            if d > best {
                (p1, p2, best) = (*a, *b, d);
            }
        }
    }
    let len = best.sqrt();
    if len < 1.0 {
        return None;
    }
    let d = [(p2[0] - p1[0]) / len, (p2[1] - p1[1]) / len];
    let n = [-d[1], d[0]];
    // Longest perpendicular chord: bin pixels by their position along the long axis (1-pixel
    // bins) and take the bin with the widest extent across it.
    let bins = len.round() as usize + 1;
    let mut lo = vec![f32::INFINITY; bins];
    let mut hi = vec![f32::NEG_INFINITY; bins];
    for p in &pixels {
        let rel = [p[0] - p1[0], p[1] - p1[1]];
        let u = rel[0] * d[0] + rel[1] * d[1];
        let v = rel[0] * n[0] + rel[1] * n[1];
        let b = u.round().clamp(0.0, (bins - 1) as f32) as usize;
        lo[b] = lo[b].min(v);
        hi[b] = hi[b].max(v);
    }
    let mid = (bins - 1) as f32 / 2.0;
    let (mut best_bin, mut best_w) = (0usize, -1.0f32);
    for b in 0..bins {
        let width = hi[b] - lo[b];
        // Prefer the bin nearest the middle among equal widths (how a reader centres the mark).
        let better = width > best_w + 1e-4
            || ((width - best_w).abs() <= 1e-4 && (b as f32 - mid).abs() < (best_bin as f32 - mid).abs());
        if width.is_finite() && better {
            (best_bin, best_w) = (b, width);
        }
    }
    if best_w < 1.0 {
        return None;
    }
    // The short axis's end points are projections, so a lesion touching the image border can put
    // one a fraction of a pixel outside it; keep them on the image, as the reader requires.
    let at = |u: f32, v: f32| {
        [
            (p1[0] + u * d[0] + v * n[0]).clamp(0.0, (w - 1) as f32),
            (p1[1] + u * d[1] + v * n[1]).clamp(0.0, (h - 1) as f32),
        ]
    };
    let u = best_bin as f32;
    Some([p1, p2, at(u, lo[best_bin]), at(u, hi[best_bin])])
}

/// Andrew's monotone chain; returns the hull vertices (all points if fewer than 3).
fn convex_hull(mut pts: Vec<[f32; 2]>) -> Vec<[f32; 2]> {
    pts.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let cross = |o: [f32; 2], a: [f32; 2], b: [f32; 2]| (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
    let mut hull: Vec<[f32; 2]> = Vec::with_capacity(pts.len() * 2);
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &[f32; 2]>> =
            if pass == 0 { Box::new(pts.iter()) } else { Box::new(pts.iter().rev()) };
        for &p in iter {
            while hull.len() >= start + 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0 {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn dist(a: [f32; 2], b: [f32; 2]) -> f32 {
        ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
    }

    #[test]
    fn rotated_ellipses_give_their_axes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (w, h) = (96usize, 80usize);
        for _ in 0..20 {
            let a: f32 = rng.random_range(8.0..30.0);
            let b: f32 = rng.random_range(3.0..a * 0.8);
            let t: f32 = rng.random_range(0.0..std::f32::consts::PI);
            let (cx, cy) = (rng.random_range(40.0..56.0f32), rng.random_range(35.0..45.0f32));
            let mut mask = vec![0u8; w * h];
            for y in 0..h {
                for x in 0..w {
                    let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                    let u = dx * t.cos() + dy * t.sin();
                    let v = -dx * t.sin() + dy * t.cos();
                    if (u / a).powi(2) + (v / b).powi(2) <= 1.0 {
                        mask[y * w + x] = 255;
                    }
                }
            }
            let r = recist_from_mask(&mask, w, h).unwrap();
            let (long, short) = (dist(r[0], r[1]), dist(r[2], r[3]));
            assert!((long - 2.0 * a).abs() < 2.0, "long {long} vs {}", 2.0 * a);
            assert!((short - 2.0 * b).abs() < 2.0, "short {short} vs {}", 2.0 * b);
            let dl = [r[1][0] - r[0][0], r[1][1] - r[0][1]];
            let ds = [r[3][0] - r[2][0], r[3][1] - r[2][1]];
            assert!((dl[0] * ds[0] + dl[1] * ds[1]).abs() / (long * short) < 1e-3, "not perpendicular");
            for p in r {
                assert_eq!(mask[p[1].round() as usize * w + p[0].round() as usize], 255, "mark off the mask");
            }
        }
        assert!(recist_from_mask(&vec![0u8; 16], 4, 4).is_none());
        let mut line = vec![0u8; 100];
        line[40..50].fill(255);
        assert!(recist_from_mask(&line, 10, 10).is_none(), "a one-pixel line has no short axis");
    }

    #[test]
    fn marks_of_a_lesion_cut_by_the_image_border_stay_on_the_image() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (w, h) = (40usize, 32usize);
        for _ in 0..200 {
            // A tilted ellipse centred near a corner or an edge, so the border cuts it.
            let (cx, cy) = (rng.random_range(-3.0..4.0f32), rng.random_range(-3.0..(h as f32 + 3.0)));
            let (a, b, t) = (rng.random_range(5.0..12.0f32), rng.random_range(3.0..5.0f32), rng.random_range(0.0..std::f32::consts::PI));
            let mut mask = vec![0u8; w * h];
            for y in 0..h {
                for x in 0..w {
                    let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                    let (u, v) = (dx * t.cos() + dy * t.sin(), -dx * t.sin() + dy * t.cos());
                    if (u / a).powi(2) + (v / b).powi(2) <= 1.0 {
                        mask[y * w + x] = 255;
                    }
                }
            }
            if let Some(r) = recist_from_mask(&mask, w, h) {
                for p in r {
                    assert!((0.0..=(w - 1) as f32).contains(&p[0]) && (0.0..=(h - 1) as f32).contains(&p[1]), "{p:?} off the {w}x{h} image");
                }
            }
        }
    }

    #[test]
    fn marks_and_windows_are_checked_alike_everywhere() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..500 {
            let (w, h) = (rng.random_range(16..600usize), rng.random_range(16..600usize));
            // A random cross inside the image: long axis through a centre, short one across it,
            // the crossing anywhere along both (hand-drawn marks rarely cross in the middle).
            let c = [rng.random_range(4.0..(w - 5) as f32), rng.random_range(4.0..(h - 5) as f32)];
            let t: f32 = rng.random_range(0.0..std::f32::consts::PI);
            let (d, n) = ([t.cos(), t.sin()], [-t.sin(), t.cos()]);
            let (a1, a2) = (rng.random_range(1.0..4.0f32), rng.random_range(1.0..4.0f32));
            let (b1, b2) = (rng.random_range(0.5..3.0f32), rng.random_range(0.5..3.0f32));
            let at = |dir: [f32; 2], s: f32| [c[0] + dir[0] * s, c[1] + dir[1] * s];
            let good = [at(d, -a1), at(d, a2), at(n, -b1), at(n, b2)];
            assert_eq!(check_recist(&good, w, h), Ok(()), "{good:?} on {w}x{h}");
            let mut r = good;
            let k = rng.random_range(0..4usize);
            match rng.random_range(0..4) {
                0 => r[k][rng.random_range(0..2usize)] = -rng.random_range(0.01..50.0f32),
                1 => r[k] = [w as f32 - 1.0 + rng.random_range(0.01..50.0f32), r[k][1]],
                2 => r[k] = [f32::NAN, r[k][1]],
                _ => {
                    // The short axis moved well clear of the long one, along the long axis.
                    let size = (a1 + a2).max(b1 + b2);
                    let off = a2 + size * (1.0 + CROSS_SLACK_FRACTION) + CROSS_SLACK_PX;
                    let (s3, s4) = (at(d, off), at(d, off));
                    r[2] = [s3[0] - n[0] * b1, s3[1] - n[1] * b1];
                    r[3] = [s4[0] + n[0] * b2, s4[1] + n[1] * b2];
                }
            }
            let off_image = r.iter().any(|q| !(q[0] >= 0.0 && q[1] >= 0.0 && q[0] <= (w - 1) as f32 && q[1] <= (h - 1) as f32));
            let e = check_recist(&r, w, h).expect_err(&format!("{r:?} on {w}x{h} accepted"));
            assert!(e.contains("outside") || e.contains("not finite") || (!off_image && e.contains("do not cross")), "{e}");
        }
        let e = check_recist(&[[1.0, 1.0], [9.0, 1.0], [3.0, 4.0], [6.0, 4.0]], 20, 20).unwrap_err();
        assert!(e.contains("parallel"), "{e}");
        let e = check_recist(&[[-1.0, 1.0], [9.0, 1.0], [3.0, 0.0], [3.0, 4.0]], 20, 20).unwrap_err();
        assert!(e.contains("p1") && e.contains("negative"), "{e}");
        let e = check_recist(&[[1.0, 1.0], [9.0, 1.0], [3.0, 2.0], [3.0, 2.0]], 20, 20).unwrap_err();
        assert!(e.contains("short axis has zero length"), "{e}");
        assert!(check_window([-160.0, 240.0]).is_ok());
        assert!(check_window([240.0, -160.0]).unwrap_err().contains("reversed"));
        assert!(check_window([40.0, 40.0]).unwrap_err().contains("empty"));
        assert!(check_window([f32::NEG_INFINITY, 40.0]).unwrap_err().contains("not finite"));
    }

    #[test]
    fn drawn_marks_of_synthetic_lesions_pass_the_check() {
        // Hand-slipped marks (synth::as_drawn) are what the crossing slack exists for.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (w, h) = (128usize, 128usize);
        let mut checked = 0;
        for _ in 0..400 {
            let a: f32 = rng.random_range(3.0..30.0);
            let b: f32 = rng.random_range(1.5..a);
            let t: f32 = rng.random_range(0.0..std::f32::consts::PI);
            let mut mask = vec![0u8; w * h];
            for y in 0..h {
                for x in 0..w {
                    let (dx, dy) = (x as f32 - 64.0, y as f32 - 64.0);
                    let (u, v) = (dx * t.cos() + dy * t.sin(), -dx * t.sin() + dy * t.cos());
                    if (u / a).powi(2) + (v / b).powi(2) <= 1.0 {
                        mask[y * w + x] = 255;
                    }
                }
            }
            let Some(exact) = recist_from_mask(&mask, w, h) else { continue };
            let drawn = crate::data::synth::as_drawn(&mut rng, exact, 0.0, w);
            assert_eq!(check_recist(&exact, w, h), Ok(()), "exact {exact:?}");
            assert_eq!(check_recist(&drawn, w, h), Ok(()), "drawn {drawn:?} of exact {exact:?}");
            checked += 1;
        }
        assert!(checked > 300, "{checked}");
    }
}
