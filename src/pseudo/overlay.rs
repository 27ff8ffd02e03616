//! Overlays a person can look at: a grey crop, enlarged, with mask outlines and RECIST lines
//! drawn in colour, written as an RGB PNG.

use super::seeds::Recist;
use crate::error::{Error, Result};
use crate::io::Image;
use crate::metrics::Mask;

pub const GREEN: [u8; 3] = [40, 230, 60];
pub const RED: [u8; 3] = [240, 40, 40];
pub const YELLOW: [u8; 3] = [250, 220, 40];
pub const CYAN: [u8; 3] = [40, 210, 240];

/// An RGB canvas `scale` times the size of the crop it shows.
pub struct Overlay {
    crop_w: usize,
    crop_h: usize,
    scale: usize,
    image: Image<u8>,
}

impl Overlay {
    /// The canvas for a `w` x `h` grey crop with values in [0, 1] (clamped), each crop pixel
    /// drawn as a `scale` x `scale` block.
    pub fn new(grey: &[f32], w: usize, h: usize, scale: usize) -> Result<Self> {
        if grey.len() != w * h || scale == 0 {
            return Err(Error::shape("Overlay::new", format!("{} values for a {w}x{h} crop at scale {scale}", grey.len())));
        }
        let (cw, ch) = (w * scale, h * scale);
        let mut data = Vec::with_capacity(cw * ch * 3);
        for y in 0..ch {
            for x in 0..cw {
                let v = (grey[(y / scale) * w + x / scale].clamp(0.0, 1.0) * 255.0).round() as u8;
                data.extend([v, v, v]);
            }
        }
        Ok(Overlay { crop_w: w, crop_h: h, scale, image: Image::new(cw, ch, 3, data) })
    }

    fn put(&mut self, x: usize, y: usize, rgb: [u8; 3]) {
        let i = (y * self.image.width + x) * 3;
        self.image.data[i..i + 3].copy_from_slice(&rgb);
    }

    /// Draws the border of `mask` (a crop-sized mask): canvas pixels inside the mask with a
    /// 4-neighbour outside it.
    pub fn outline(&mut self, mask: &Mask, rgb: [u8; 3]) -> Result<()> {
        if (mask.width, mask.height) != (self.crop_w, self.crop_h) {
            return Err(Error::shape(
                "Overlay::outline",
                format!("mask is {}x{}, crop is {}x{}", mask.width, mask.height, self.crop_w, self.crop_h),
            ));
        }
        let (cw, ch, s) = (self.image.width as isize, self.image.height as isize, self.scale as isize);
        let inside = |x: isize, y: isize| x >= 0 && y >= 0 && x < cw && y < ch && mask.get((x / s) as usize, (y / s) as usize);
        for y in 0..ch {
            for x in 0..cw {
                if inside(x, y) && !(inside(x - 1, y) && inside(x + 1, y) && inside(x, y - 1) && inside(x, y + 1)) {
                    self.put(x as usize, y as usize, rgb);
                }
            }
        }
        Ok(())
    }

    /// Draws a segment between two crop points (pixel centres at integers).
    pub fn line(&mut self, a: (f32, f32), b: (f32, f32), rgb: [u8; 3]) {
        let s = self.scale as f32;
        let to_canvas = |p: (f32, f32)| ((p.0 + 0.5) * s - 0.5, (p.1 + 0.5) * s - 0.5);
        let (a, b) = (to_canvas(a), to_canvas(b));
        let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) * 2.0).ceil().max(1.0) as usize;
        for k in 0..=steps {
            let t = k as f32 / steps as f32;
            let (x, y) = ((a.0 + t * (b.0 - a.0)).round(), (a.1 + t * (b.1 - a.1)).round());
            if x >= 0.0 && y >= 0.0 && (x as usize) < self.image.width && (y as usize) < self.image.height {
                self.put(x as usize, y as usize, rgb);
            }
        }
    }

    /// Draws both RECIST diameters.
    pub fn recist(&mut self, r: &Recist, rgb: [u8; 3]) {
        self.line(r.long[0], r.long[1], rgb);
        self.line(r.short[0], r.short[1], rgb);
    }

    pub fn into_image(self) -> Image<u8> {
        self.image
    }

    pub fn write(self, path: impl AsRef<std::path::Path>) -> Result<()> {
        crate::io::write_u8(path, &self.image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn outline_and_lines_land_where_expected() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let grey: Vec<f32> = (0..8 * 6).map(|_| rng.random_range(0.0..1.0)).collect();
        let mut o = Overlay::new(&grey, 8, 6, 3).unwrap();
        assert_eq!(o.image.get(4, 7, 0), (grey[2 * 8 + 1] * 255.0).round() as u8);
        // A 2x2 block at crop (2..=3, 1..=2) is canvas (6..=11, 3..=8): its border is drawn,
        // its interior and the outside are not.
        let m = Mask::from_fn(8, 6, |x, y| (2..=3).contains(&x) && (1..=2).contains(&y));
        o.outline(&m, GREEN).unwrap();
        let px = |o: &Overlay, x: usize, y: usize| [o.image.get(x, y, 0), o.image.get(x, y, 1), o.image.get(x, y, 2)];
        assert_eq!(px(&o, 6, 3), GREEN);
        assert_eq!(px(&o, 11, 8), GREEN);
        assert_ne!(px(&o, 8, 5), GREEN);
        assert_ne!(px(&o, 5, 3), GREEN);
        // A horizontal line through crop row 4 from x=0 to x=7 covers canvas row 13.
        o.line((0.0, 4.0), (7.0, 4.0), RED);
        assert!((1..23).all(|x| px(&o, x, 13) == RED));
        assert!(o.outline(&Mask::empty(5, 5), GREEN).is_err());
    }
}
