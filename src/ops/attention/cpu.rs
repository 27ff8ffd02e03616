//! The fused CSA ops on the CPU: one task per image. Sums run in f64 in the composed ops' order
//! (a channel's pixels in order, as `sum_to`'s trailing reduction; a pixel's channels in order,
//! as its strided one), so the forward equals the composed ops' to the bit.

use super::{CsaKernels, GATE, POOL};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{Cpu, for_each_par_if_large};
use crate::tensor::{Shape, Storage, Tensor};
use rayon::prelude::*;

/// (N, C, H*W): the kernels see each image as C rows of H*W pixels.
fn rows(s: &Shape) -> (usize, usize, usize) {
    let [n, c, h, w] = s.nchw();
    (n, c, h * w)
}

impl CsaKernels for Cpu {
    fn csa_pool_fwd(&self, f: &Tensor) -> Result<Storage> {
        let (n, c, hw) = rows(f.shape());
        let sf = f.storage();
        let fv = sf.as_cpu(POOL)?;
        // `mean` scales by 1/count through affine (`v * mul + add`): the same rounding here.
        let (inv_hw, inv_c) = (1.0 / hw as f32, 1.0 / c as f32);
        let mut out = vec![0f32; n * (c + hw)];
        let image = |(o, x): (&mut [f32], &[f32])| {
            let (gap, mean) = o.split_at_mut(c);
            let mut acc = vec![0f64; hw];
            for (g, plane) in gap.iter_mut().zip(x.chunks(hw)) {
                let mut sum = 0f64;
                for (a, &v) in acc.iter_mut().zip(plane) {
                    sum += v as f64;
                    *a += v as f64;
                }
                *g = (sum as f32) * inv_hw + 0.0;
            }
            for (m, &a) in mean.iter_mut().zip(&acc) {
                *m = (a as f32) * inv_c + 0.0;
            }
        };
        for_each_par_if_large(fv.len(), out.par_chunks_mut(c + hw).zip(fv.par_chunks(c * hw)), image);
        Ok(Storage::Cpu(out))
    }

    fn csa_pool_bwd(&self, g: &Tensor, f_shape: &Shape) -> Result<Tensor> {
        let (n, c, hw) = rows(f_shape);
        let sg = g.storage();
        let gv = sg.as_cpu(POOL)?;
        let (inv_hw, inv_c) = (1.0 / hw as f32, 1.0 / c as f32);
        let mut df = vec![0f32; n * c * hw];
        let image = |(d, gn): (&mut [f32], &[f32])| {
            let (dgap, dmean) = gn.split_at(c);
            for (plane, &dg) in d.chunks_mut(hw).zip(dgap) {
                for (v, &dm) in plane.iter_mut().zip(dmean) {
                    *v = dg * inv_hw + dm * inv_c;
                }
            }
        };
        for_each_par_if_large(df.len(), df.par_chunks_mut(c * hw).zip(gv.par_chunks(c + hw)), image);
        Tensor::from_vec(df, f_shape.clone(), Device::Cpu)
    }

    fn csa_gate_fwd(&self, f: &Tensor, c: &Tensor, s: &Tensor) -> Result<Storage> {
        let (_, ch, hw) = rows(f.shape());
        let (sf, sc, ss) = (f.storage(), c.storage(), s.storage());
        let (fv, cv, sv) = (sf.as_cpu(GATE)?, sc.as_cpu(GATE)?, ss.as_cpu(GATE)?);
        let mut y = vec![0f32; fv.len()];
        let plane = |(i, (yp, xp)): (usize, (&mut [f32], &[f32]))| {
            let (gate, sp) = (cv[i], &sv[(i / ch) * hw..(i / ch + 1) * hw]);
            for ((o, &x), &s) in yp.iter_mut().zip(xp).zip(sp) {
                *o = (x * gate) * s;
            }
        };
        for_each_par_if_large(fv.len(), y.par_chunks_mut(hw).zip(fv.par_chunks(hw)).enumerate(), plane);
        Ok(Storage::Cpu(y))
    }

    fn csa_gate_bwd(&self, g: &Tensor, f: &Tensor, c: &Tensor, s: &Tensor) -> Result<[Tensor; 3]> {
        let (n, ch, hw) = rows(f.shape());
        let (sg, sf, sc, ss) = (g.storage(), f.storage(), c.storage(), s.storage());
        let (gv, fv, cv, sv) = (sg.as_cpu(GATE)?, sf.as_cpu(GATE)?, sc.as_cpu(GATE)?, ss.as_cpu(GATE)?);
        let (mut df, mut dc, mut ds) = (vec![0f32; fv.len()], vec![0f32; n * ch], vec![0f32; n * hw]);
        // Rounded as the composed backward of f.mul(c).mul(s): df = (g*s)*c, dc = sum (g*s)*f,
        // ds = sum g*(f*c).
        let per_image = df
            .par_chunks_mut(ch * hw)
            .zip(dc.par_chunks_mut(ch))
            .zip(ds.par_chunks_mut(hw))
            .zip(gv.par_chunks(ch * hw).zip(fv.par_chunks(ch * hw)))
            .enumerate();
        for_each_par_if_large(fv.len(), per_image, |(i, (((dfi, dci), dsi), (gi, fi)))| {
            let (ci, si) = (&cv[i * ch..(i + 1) * ch], &sv[i * hw..(i + 1) * hw]);
            let mut acc = vec![0f64; hw];
            for (k, (dc_k, &gate)) in dci.iter_mut().zip(ci).enumerate() {
                let span = k * hw..(k + 1) * hw;
                let (dp, gp, xp) = (&mut dfi[span.clone()], &gi[span.clone()], &fi[span]);
                let mut sum = 0f64;
                for ((((d, &g), &x), &s), a) in dp.iter_mut().zip(gp).zip(xp).zip(si).zip(acc.iter_mut()) {
                    let gs = g * s;
                    *d = gs * gate;
                    sum += (gs * x) as f64;
                    *a += (g * (x * gate)) as f64;
                }
                *dc_k = sum as f32;
            }
            for (d, &a) in dsi.iter_mut().zip(&acc) {
                *d = a as f32;
            }
        });
        Ok([
            Tensor::from_vec(df, f.shape().clone(), Device::Cpu)?,
            Tensor::from_vec(dc, c.shape().clone(), Device::Cpu)?,
            Tensor::from_vec(ds, s.shape().clone(), Device::Cpu)?,
        ])
    }
}
