//! A binary mask: the unit every metric compares and every segmenter produces.

use crate::error::{Error, Result};
use crate::io::Image;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    /// Row-major, `true` = foreground (lesion).
    pub data: Vec<bool>,
}

impl Mask {
    /// A mask from row-major data; the length must be `width * height`.
    pub fn new(width: usize, height: usize, data: Vec<bool>) -> Result<Self> {
        if data.len() != width * height {
            return Err(Error::shape(
                "Mask::new",
                format!("{} values for a {width}x{height} mask (expected {})", data.len(), width * height),
            ));
        }
        Ok(Mask { width, height, data })
    }

    /// An empty (all background) mask.
    pub fn empty(width: usize, height: usize) -> Self {
        Mask { width, height, data: vec![false; width * height] }
    }

    /// A mask whose pixel (x, y) is `f(x, y)`.
    pub fn from_fn(width: usize, height: usize, mut f: impl FnMut(usize, usize) -> bool) -> Self {
        let mut data = Vec::with_capacity(width * height);
        for y in 0..height {
            for x in 0..width {
                data.push(f(x, y));
            }
        }
        Mask { width, height, data }
    }

    /// A single-channel 8-bit image as a mask: any nonzero pixel is foreground.
    pub fn from_image(img: &Image<u8>) -> Result<Self> {
        if img.channels != 1 {
            return Err(Error::invalid(
                "Mask::from_image",
                format!("{} channels; a mask has 1 (read it with io::read_gray8)", img.channels),
            ));
        }
        Ok(Mask { width: img.width, height: img.height, data: img.data.iter().map(|&v| v != 0).collect() })
    }

    /// Reads a mask PNG (grey or RGB; nonzero = foreground).
    pub fn read(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::from_image(&crate::io::read_gray8(path)?)
    }

    /// The mask as a 0/255 grey image, the format masks are written in.
    pub fn to_image(&self) -> Image<u8> {
        Image::new(self.width, self.height, 1, self.data.iter().map(|&b| if b { 255 } else { 0 }).collect())
    }

    /// Writes the mask as a 0/255 grey PNG.
    pub fn write(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        crate::io::write_u8(path, &self.to_image())
    }

    pub fn get(&self, x: usize, y: usize) -> bool {
        self.data[y * self.width + x]
    }

    /// Number of foreground pixels.
    pub fn area(&self) -> usize {
        self.data.iter().filter(|&&b| b).count()
    }

    pub fn is_empty(&self) -> bool {
        !self.data.iter().any(|&b| b)
    }
}
