//! A small line-plot rasteriser for the training curves (loss, learning rate, validation
//! metrics): axes with "nice" ticks, tick labels and a legend in a built-in 5x7 bitmap font,
//! polylines; written as RGB PNG through `crate::io`. No system fonts, no plotting crate.

use crate::error::{Error, Result};
use crate::io::{self, Image};
use std::path::Path;

/// One curve: its legend name, colour and (x, y) points (non-finite points break the line).
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub color: [u8; 3],
    pub points: Vec<(f64, f64)>,
}

/// Colours for successive series (Tableau's first six).
pub const PALETTE: [[u8; 3]; 6] = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75]];

const WIDTH: usize = 900;
const HEIGHT: usize = 560;
/// Font pixels are drawn as SCALE x SCALE squares.
const SCALE: usize = 2;
const LEFT: usize = 110;
const RIGHT: usize = 230;
const TOP: usize = 64;
const BOTTOM: usize = 70;

/// An RGB canvas, white to start with.
pub struct Canvas {
    img: Image<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize) -> Self {
        Canvas { img: Image::new(width, height, 3, vec![255; width * height * 3]) }
    }
    pub fn image(&self) -> &Image<u8> {
        &self.img
    }
    pub fn into_image(self) -> Image<u8> {
        self.img
    }
    pub fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.img.width && (y as usize) < self.img.height {
            let i = (y as usize * self.img.width + x as usize) * 3;
            self.img.data[i..i + 3].copy_from_slice(&c);
        }
    }
    pub fn get(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.img.width + x) * 3;
        [self.img.data[i], self.img.data[i + 1], self.img.data[i + 2]]
    }
    /// A line `thick` pixels wide (Bresenham, each step a square dot).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), thick: i64, c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            for oy in 0..thick {
                for ox in 0..thick {
                    self.set(x + ox - thick / 2, y + oy - thick / 2, c);
                }
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }
    /// Text with its top-left corner at (x, y); lower case is drawn as upper case.
    pub fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            let gx = x + (k * 6 * SCALE) as i64;
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0b10000 >> col) != 0 {
                        for oy in 0..SCALE as i64 {
                            for ox in 0..SCALE as i64 {
                                self.set(gx + (col * SCALE) as i64 + ox, y + (r * SCALE) as i64 + oy, c);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Width in pixels of `s` drawn by `Canvas::text`.
pub fn text_width(s: &str) -> usize {
    s.chars().count() * 6 * SCALE
}

/// Ticks at 1, 2 or 5 x 10^k covering [lo, hi], about `target` of them.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

fn tick_label(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() >= 1e5 || v.abs() < 1e-3 {
        return format!("{v:.1e}");
    }
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
    format!("{v:.decimals$}")
}

/// Where the data range maps onto the plot area.
struct Frame {
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn px(&self, x: f64, y: f64) -> (i64, i64) {
        let w = (WIDTH - LEFT - RIGHT) as f64;
        let h = (HEIGHT - TOP - BOTTOM) as f64;
        let fx = (x - self.x.0) / (self.x.1 - self.x.0);
        let fy = (y - self.y.0) / (self.y.1 - self.y.0);
        ((LEFT as f64 + fx * w).round() as i64, ((HEIGHT - BOTTOM) as f64 - fy * h).round() as i64)
    }
}

fn range(vals: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = vals.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return None;
    }
    // A flat curve still gets a visible range.
    if hi - lo < 1e-12 { Some((lo - 0.5 * lo.abs().max(1e-3), hi + 0.5 * hi.abs().max(1e-3))) } else { Some((lo, hi)) }
}

/// Draws the series on axes fitted to their finite points; an error when none has any.
pub fn line_plot(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<Image<u8>> {
    let pts = || series.iter().flat_map(|s| s.points.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (Some(xr), Some(yr)) = (range(pts().map(|p| p.0)), range(pts().map(|p| p.1))) else {
        return Err(Error::invalid("line_plot", format!("'{title}': no finite point to draw")));
    };
    let pad = (yr.1 - yr.0) * 0.05;
    let frame = Frame { x: xr, y: (yr.0 - pad, yr.1 + pad) };
    // The plot area is fixed; the canvas widens when a legend name is longer than RIGHT allows.
    let legend_w = series.iter().map(|s| text_width(&s.name)).max().unwrap_or(0);
    let mut c = Canvas::new((WIDTH - RIGHT + 52 + legend_w + 12).max(WIDTH), HEIGHT);
    let (black, grey) = ([0, 0, 0], [225, 225, 225]);

    let xt = nice_ticks(frame.x.0, frame.x.1, 8);
    let yt = nice_ticks(frame.y.0, frame.y.1, 6);
    let xstep = if xt.len() > 1 { xt[1] - xt[0] } else { 1.0 };
    let ystep = if yt.len() > 1 { yt[1] - yt[0] } else { 1.0 };
    let (left, right) = (LEFT as i64, (WIDTH - RIGHT) as i64);
    let (top, bottom) = (TOP as i64, (HEIGHT - BOTTOM) as i64);
    for &v in &yt {
        let (_, y) = frame.px(frame.x.0, v);
        c.line((left, y), (right, y), 1, grey);
        let label = tick_label(v, ystep);
        c.text(left - 8 - text_width(&label) as i64, y - 7, &label, black);
    }
    for &v in &xt {
        let (x, _) = frame.px(v, frame.y.0);
        c.line((x, top), (x, bottom), 1, grey);
        let label = tick_label(v, xstep);
        c.text(x - text_width(&label) as i64 / 2, bottom + 8, &label, black);
    }
    c.line((left, top), (left, bottom), 2, black);
    c.line((left, bottom), (right, bottom), 2, black);
    c.text(left, 12, title, black);
    c.text((left + right) / 2 - text_width(x_label) as i64 / 2, bottom + 36, x_label, black);
    // Below the title (y 12..26 at SCALE 2), above the plot area.
    c.text(8, top - 24, y_label, black);

    for (k, s) in series.iter().enumerate() {
        let mut prev: Option<(i64, i64)> = None;
        for &(x, y) in &s.points {
            if !(x.is_finite() && y.is_finite()) {
                prev = None;
                continue;
            }
            let p = frame.px(x, y);
            match prev {
                Some(q) => c.line(q, p, 2, s.color),
                None => c.line(p, p, 3, s.color),
            }
            prev = Some(p);
        }
        let ly = top + 10 + 26 * k as i64;
        c.line((right + 14, ly + 6), (right + 44, ly + 6), 3, s.color);
        c.text(right + 52, ly, &s.name, black);
    }
    Ok(c.into_image())
}

/// `line_plot` written as an RGB PNG.
pub fn write_line_plot(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    io::write_u8(path, &line_plot(title, x_label, y_label, series)?)
}

/// 5x7 glyphs, one byte per row, bit 4 = leftmost column. Unknown characters draw as a box.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        ' ' => [0; 7],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn ticks_are_nice_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = nice_ticks(0.013, 0.87, 6);
        assert!((t[1] - t[0] - 0.2).abs() < 1e-12, "{t:?}");
        assert!(t[0] >= 0.013 && *t.last().unwrap() <= 0.87);
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(tick_label(2000.0, 500.0), "2000");
    }

    #[test]
    fn glyphs_differ_and_text_draws() {
        let digits: Vec<[u8; 7]> = "0123456789".chars().map(glyph).collect();
        for i in 0..10 {
            for j in i + 1..10 {
                assert_ne!(digits[i], digits[j], "{i} vs {j}");
            }
        }
        let mut c = Canvas::new(40, 20);
        c.text(1, 1, "1", [0, 0, 0]);
        let ink = (0..20).flat_map(|y| (0..40).map(move |x| (x, y))).filter(|&(x, y)| c.get(x, y) == [0, 0, 0]).count();
        // '1' has 10 set bits, each SCALE² pixels.
        assert_eq!(ink, 10 * SCALE * SCALE);
    }

    #[test]
    fn curves_land_where_their_points_map() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let a: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, 2.0 + rng.random_range(-0.3..0.3) - i as f64 * 0.02)).collect();
        let b: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, 0.5 + rng.random_range(-0.1..0.1))).collect();
        let series = [
            Series { name: "train loss".into(), color: PALETTE[0], points: a.clone() },
            Series { name: "val".into(), color: PALETTE[1], points: b.clone() },
        ];
        let img = line_plot("Loss", "iteration", "loss", &series).unwrap();
        assert_eq!((img.width, img.height, img.channels), (WIDTH, HEIGHT, 3));
        let c = Canvas { img };
        // Recompute the frame as line_plot does and check a vertex of each curve is coloured.
        let ys = a.iter().chain(&b).map(|p| p.1);
        let (lo, hi) = range(ys).unwrap();
        let pad = (hi - lo) * 0.05;
        let frame = Frame { x: (0.0, 49.0), y: (lo - pad, hi + pad) };
        for (s, k) in [(&a, 0), (&b, 1)] {
            for &i in &[0usize, 17, 49] {
                let (x, y) = frame.px(s[i].0, s[i].1);
                assert_eq!(c.get(x as usize, y as usize), PALETTE[k], "series {k} point {i}");
            }
        }
        let e = line_plot("empty", "x", "y", &[Series { name: "n".into(), color: PALETTE[0], points: vec![(0.0, f64::NAN)] }]);
        assert!(e.unwrap_err().to_string().contains("'empty'"));
    }

    #[test]
    fn a_long_legend_name_widens_the_canvas_instead_of_being_cut() {
        let name = "precision vs pseudo-masks (crop space)";
        let points: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, (i * i) as f64)).collect();
        let img = line_plot("t", "x", "y", &[Series { name: name.into(), color: PALETTE[2], points }]).unwrap();
        let text_end = WIDTH - RIGHT + 52 + text_width(name);
        assert!(img.width > text_end && img.width > WIDTH, "{} px for text ending at {text_end}", img.width);
        // The last glyph (")") has ink in its own 6*SCALE-wide cell.
        let c = Canvas { img };
        let ink = (text_end - 6 * SCALE..text_end).flat_map(|x| (0..HEIGHT).map(move |y| (x, y))).filter(|&(x, y)| c.get(x, y) == [0, 0, 0]).count();
        assert!(ink > 0);
    }
}
