//! Smooth closed shapes for the phantom and the lesions: a rotated ellipse whose radius is
//! modulated by a few angular harmonics, r(t) = 1 + sum a_k cos(k t + phi_k). Few low harmonics
//! give organ outlines and lobulated lesions; more, higher ones give irregular (spiculated) edges.

/// One angular harmonic: order k, relative amplitude, phase.
#[derive(Clone, Copy, Debug)]
pub struct Harmonic {
    pub k: u32,
    pub amp: f32,
    pub phase: f32,
}

/// A blob in pixel coordinates.
#[derive(Clone, Debug)]
pub struct Blob {
    pub cx: f32,
    pub cy: f32,
    pub rx: f32,
    pub ry: f32,
    /// Rotation in radians.
    pub angle: f32,
    pub harmonics: Vec<Harmonic>,
}

impl Blob {
    pub fn ellipse(cx: f32, cy: f32, rx: f32, ry: f32, angle: f32) -> Blob {
        Blob { cx, cy, rx, ry, angle, harmonics: Vec::new() }
    }
    pub fn circle(cx: f32, cy: f32, r: f32) -> Blob {
        Self::ellipse(cx, cy, r, r, 0.0)
    }
    /// The same outline with radii grown (negative: shrunk) by `d` pixels (approximately).
    pub fn grown(&self, d: f32) -> Blob {
        Blob { rx: (self.rx + d).max(0.0), ry: (self.ry + d).max(0.0), ..self.clone() }
    }
    /// Scaled about its centre.
    pub fn scaled(&self, s: f32) -> Blob {
        Blob { rx: self.rx * s, ry: self.ry * s, ..self.clone() }
    }

    /// Largest reach from the centre in pixels (for bounding boxes).
    pub fn reach(&self) -> f32 {
        let h: f32 = self.harmonics.iter().map(|h| h.amp.abs()).sum();
        self.rx.max(self.ry) * (1.0 + h) + 1.0
    }

    /// Normalised distance: < 1 inside, 1 on the outline, growing outward.
    pub fn level(&self, x: f32, y: f32) -> f32 {
        self.prepare().level(x, y)
    }

    /// Upper bound on |grad level| in 1/pixel: the ellipse part changes by at most 1/r_min per
    /// pixel, the harmonic modulation M(t) >= m_min adds sum k |a_k| / m_min.
    fn slope_bound(&self) -> f32 {
        let sum_a: f32 = self.harmonics.iter().map(|h| h.amp.abs()).sum();
        let sum_ka: f32 = self.harmonics.iter().map(|h| h.k as f32 * h.amp.abs()).sum();
        let m_min = (1.0 - sum_a).max(0.2);
        let r_min = self.rx.min(self.ry).max(1e-3);
        (1.0 / r_min) * (1.0 / m_min) * (1.0 + sum_ka / m_min) * (self.rx.max(self.ry) / r_min)
    }

    /// The blob with its trigonometry precomputed, for evaluating many pixels.
    pub fn prepare(&self) -> PreparedBlob {
        let (s, c) = self.angle.sin_cos();
        PreparedBlob {
            cx: self.cx,
            cy: self.cy,
            cos: c,
            sin: s,
            inv_rx: 1.0 / self.rx.max(1e-3),
            inv_ry: 1.0 / self.ry.max(1e-3),
            slope: self.slope_bound(),
            harmonics: self
                .harmonics
                .iter()
                .map(|h| {
                    let (ps, pc) = h.phase.sin_cos();
                    (h.k, h.amp * pc, h.amp * ps)
                })
                .collect(),
        }
    }

    /// Pixel bounds [x0, x1) x [y0, y1) that can contain the blob, clipped to w x h.
    pub fn bounds(&self, w: usize, h: usize) -> (usize, usize, usize, usize) {
        let r = self.reach();
        let clip = |v: f32, n: usize| v.max(0.0).min(n as f32) as usize;
        (clip(self.cx - r, w), clip(self.cx + r + 1.0, w), clip(self.cy - r, h), clip(self.cy + r + 1.0, h))
    }
}

/// A [`Blob`] ready for per-pixel evaluation.
#[derive(Clone, Debug)]
pub struct PreparedBlob {
    cx: f32,
    cy: f32,
    cos: f32,
    sin: f32,
    inv_rx: f32,
    inv_ry: f32,
    /// Upper bound on how fast `level` changes per pixel.
    pub slope: f32,
    /// (k, amp cos phi, amp sin phi)
    harmonics: Vec<(u32, f32, f32)>,
}

impl PreparedBlob {
    /// Normalised distance: < 1 inside, 1 on the outline, growing outward.
    #[inline]
    pub fn level(&self, x: f32, y: f32) -> f32 {
        let dx = x - self.cx;
        let dy = y - self.cy;
        let u = (dx * self.cos + dy * self.sin) * self.inv_rx;
        let v = (-dx * self.sin + dy * self.cos) * self.inv_ry;
        let r = (u * u + v * v).sqrt();
        if self.harmonics.is_empty() || r < 1e-6 {
            return r;
        }
        // cos(k t + phi) = cos kt cos phi - sin kt sin phi, with cos kt, sin kt from the
        // multiple-angle recurrence on cos t = u / r, sin t = v / r (no atan2).
        let (ct, st) = (u / r, v / r);
        let mut modulation = 1.0;
        let (mut ck, mut sk, mut k) = (1.0f32, 0.0f32, 0u32);
        for &(hk, a_cos, a_sin) in &self.harmonics {
            while k < hk {
                (ck, sk) = (ck * ct - sk * st, sk * ct + ck * st);
                k += 1;
            }
            modulation += ck * a_cos - sk * a_sin;
        }
        r / modulation.max(0.2)
    }
}

/// Harmonics with orders `ks` and amplitudes drawn up to `max_amp` (decaying with order).
pub fn random_harmonics(rng: &mut impl rand::Rng, ks: std::ops::RangeInclusive<u32>, max_amp: f32) -> Vec<Harmonic> {
    ks.map(|k| Harmonic {
        k,
        amp: rng.random_range(0.0..=max_amp) * (2.0 / k.max(2) as f32).sqrt(),
        phase: rng.random_range(0.0..std::f32::consts::TAU),
    })
    .collect()
}
