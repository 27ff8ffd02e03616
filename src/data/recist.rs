//! The exact RECIST marks of a binary mask, what a radiologist aims for: the longest chord of
//! the lesion, then the longest chord perpendicular to it (`synth::as_drawn` adds the hand's slip).

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
            let (a, b, t) = (rng.random_range(5.0..12.0f32), rng.random_range(3.0..5.0f32), rng.random_range(0.0..3.14f32));
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
}
