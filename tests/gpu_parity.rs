//! GPU kernels against CPU references on the same random inputs, forward and backward, compared
//! by ||gpu - cpu|| / ||cpu|| < 1e-5 (f32). Outputs are NaN-poisoned before each launch.
//! Skips without a GPU; fails with REQUIRE_CUDA=1.
//!
//! References: the CPU convolution (src/backend/cpu/conv.rs) and naive loops written here.

mod common;
mod gpu_common;
use coseg::backend::cpu::conv::{self as cpu, ConvGeometry};
use coseg::device::Precision;
use coseg::backend::cuda::{TypedBuffer, batchnorm, conv, elementwise as ew, loss, optim, pool, reduce, resize, softmax};
use common::test_gpu;
use gpu_common::*;

fn conv_shapes() -> Vec<ConvGeometry> {
    let g = |n, c, h, w, k, r, stride, pad, dilation| ConvGeometry { n, c, h, w, k, r, s: r, stride, pad, dilation };
    vec![
        g(2, 5, 9, 11, 7, 3, 1, 1, 1),
        g(2, 16, 12, 12, 70, 3, 1, 2, 2),   // K > one 64-row tile
        g(1, 33, 16, 16, 8, 3, 1, 4, 4),
        g(3, 4, 15, 13, 6, 3, 2, 1, 1),     // stride 2, odd sizes
        g(2, 67, 6, 7, 65, 1, 1, 0, 1),     // 1x1, sizes just past the tiles
        g(1, 3, 10, 10, 4, 5, 2, 3, 2),
    ]
}

test_gpu!(gpu_conv2d_forward_and_gradients_match_cpu, |dev| {
    let mut r = rng(7);
    for g in conv_shapes() {
        let sh = g;
        let (x, w, b) = (randn(&mut r, sh.input_len()), randn(&mut r, sh.weight_len()), randn(&mut r, g.k));
        let dy = randn(&mut r, sh.output_len());
        let mut y = vec![0.0; sh.output_len()];
        cpu::conv2d_forward(&g, &x, &w, Some(&b), &mut y);
        let mut dx = vec![0.0; x.len()];
        cpu::conv2d_backward_input(&g, &dy, &w, &mut dx);
        let mut dw = vec![0.0; w.len()];
        cpu::conv2d_backward_weight(&g, &x, &dy, &mut dw);

        let (xg, wg, bg, dyg) = (dev.htod(&x).unwrap(), dev.htod(&w).unwrap(), dev.htod(&b).unwrap(), dev.htod(&dy).unwrap());
        let mut yg = poisoned(&dev, y.len());
        conv::conv2d_fwd(&dev, &sh, Precision::Fp32, &xg, &wg, Some(&bg), &mut yg).unwrap();
        assert_close(&format!("conv2d fwd {g:?}"), &dev.dtoh(&yg).unwrap(), &y, F32_TOL);
        let mut dxg = poisoned(&dev, x.len());
        conv::conv2d_bwd_input(&dev, &sh, Precision::Fp32, &dyg, &wg, &mut dxg).unwrap();
        assert_close(&format!("conv2d dx {g:?}"), &dev.dtoh(&dxg).unwrap(), &dx, F32_TOL);
        let mut dwg = poisoned(&dev, w.len());
        conv::conv2d_bwd_weight(&dev, &sh, Precision::Fp32, &xg, &dyg, &mut dwg).unwrap();
        assert_close(&format!("conv2d dw {g:?}"), &dev.dtoh(&dwg).unwrap(), &dw, F32_TOL);
    }
});

fn idx4(d: [usize; 4], i: [usize; 4]) -> usize {
    ((i[0] * d[1] + i[1]) * d[2] + i[2]) * d[3] + i[3]
}
fn coords(d: [usize; 4], mut f: usize) -> [usize; 4] {
    let mut c = [0; 4];
    for a in (0..4).rev() {
        c[a] = f % d[a];
        f /= d[a];
    }
    c
}
/// Index into a tensor of `shape` broadcast to a position of the output.
fn bidx(shape: [usize; 4], out_pos: [usize; 4]) -> usize {
    idx4(shape, std::array::from_fn(|a| if shape[a] == 1 { 0 } else { out_pos[a] }))
}

test_gpu!(gpu_scalar_ops_match_cpu, |dev| {
    let mut r = rng(12);
    let n = 3001;
    let x: Vec<f32> = randn(&mut r, n).iter().map(|v| v * 4.0).collect();
    let xg = dev.htod(&x).unwrap();
    let mut yg = poisoned(&dev, n);
    ew::affine(&dev, &xg, &mut yg, -1.5, 0.25).unwrap();
    let want: Vec<f32> = x.iter().map(|v| -1.5 * v + 0.25).collect();
    assert_close("affine", &dev.dtoh(&yg).unwrap(), &want, F32_TOL);
});

// Few outputs over long reductions (a bias gradient, a sum over channels of a large batch): the
// reduction is split over gridDim.y and added atomically; every split must land once.
test_gpu!(gpu_long_reductions_split_and_match_cpu, |dev| {
    let mut r = rng(31);
    let d = [32, 64, 20, 24];
    let x = randn(&mut r, d.iter().product());
    let xg = dev.htod(&x).unwrap();
    for keep in [[false, true, false, false], [false, false, true, true], [false, false, false, false]] {
        let (n_out, n_red) = {
            let o: usize = (0..4).filter(|&a| keep[a]).map(|a| d[a]).product();
            (o, x.len() / o)
        };
        let by_block = !keep[3];
        assert!(reduce::reduction_split(n_out, n_red, by_block, dev.sm_count() as usize).0 > 1, "{keep:?} does not split");
        let od: [usize; 4] = std::array::from_fn(|a| if keep[a] { d[a] } else { 1 });
        let mut want = vec![0.0f64; od.iter().product()];
        for (i, v) in x.iter().enumerate() {
            want[bidx(od, coords(d, i))] += *v as f64 * 0.25;
        }
        let want: Vec<f32> = want.into_iter().map(|v| v as f32).collect();
        let mut yg = poisoned(&dev, want.len());
        reduce::sum_axes(&dev, &xg, d, keep, &mut yg, 0.25).unwrap();
        assert_close(&format!("long sum keep {keep:?}"), &dev.dtoh(&yg).unwrap(), &want, F32_TOL);
    }
});

test_gpu!(gpu_sums_means_and_softmax_match_cpu, |dev| {
    let mut r = rng(13);
    let d = [3, 5, 7, 9];
    let x = randn(&mut r, 945);
    let xg = dev.htod(&x).unwrap();
    for keep in [[true, true, false, false], [true, false, true, true], [false, true, false, false], [false; 4], [true, true, true, false]] {
        let od: [usize; 4] = std::array::from_fn(|a| if keep[a] { d[a] } else { 1 });
        let mut want = vec![0.0f32; od.iter().product()];
        for i in 0..945 {
            want[bidx(od, coords(d, i))] += x[i] * 0.5;
        }
        let mut yg = poisoned(&dev, want.len());
        reduce::sum_axes(&dev, &xg, d, keep, &mut yg, 0.5).unwrap();
        assert_close(&format!("sum keep {keep:?}"), &dev.dtoh(&yg).unwrap(), &want, F32_TOL);
    }
    let dy = randn(&mut r, 945);
    let dyg = dev.htod(&dy).unwrap();
    for (outer, dim, inner) in [(3, 5, 63), (105, 9, 1)] {
        let mut y = vec![0.0f32; 945];
        let mut dx = vec![0.0f32; 945];
        for o in 0..outer {
            for i in 0..inner {
                let at = |k: usize| (o * dim + k) * inner + i;
                let m = (0..dim).map(|k| x[at(k)]).fold(f32::MIN, f32::max);
                let s: f32 = (0..dim).map(|k| (x[at(k)] - m).exp()).sum();
                (0..dim).for_each(|k| y[at(k)] = (x[at(k)] - m).exp() / s);
                let dot: f32 = (0..dim).map(|k| dy[at(k)] * y[at(k)]).sum();
                (0..dim).for_each(|k| dx[at(k)] = y[at(k)] * (dy[at(k)] - dot));
            }
        }
        let mut yg = poisoned(&dev, 945);
        softmax::softmax_fwd(&dev, &xg, &mut yg, outer, dim, inner).unwrap();
        assert_close("softmax fwd", &dev.dtoh(&yg).unwrap(), &y, F32_TOL);
        let mut dxg = poisoned(&dev, 945);
        softmax::softmax_bwd(&dev, &yg, &dyg, &mut dxg, outer, dim, inner).unwrap();
        assert_close("softmax bwd", &dev.dtoh(&dxg).unwrap(), &dx, F32_TOL);
    }
});

test_gpu!(gpu_batch_norm_training_and_eval_match_cpu, |dev| {
    let mut r = rng(14);
    let shape = [3, 4, 5, 6];
    let (n, c, hw) = (3, 4, 30);
    let x: Vec<f32> = randn(&mut r, 360).iter().map(|v| v * 3.0 + 1.0).collect();
    let dy = randn(&mut r, 360);
    let (gamma, beta) = (randn(&mut r, c), randn(&mut r, c));
    let (eps, mom) = (1e-5f32, 0.1f32);
    let at = |b: usize, ch: usize, p: usize| (b * c + ch) * hw + p;
    let m = (n * hw) as f32;
    let mut mean = vec![0.0f32; c];
    let mut var = vec![0.0f32; c];
    for ch in 0..c {
        mean[ch] = (0..n).flat_map(|b| (0..hw).map(move |p| (b, p))).map(|(b, p)| x[at(b, ch, p)]).sum::<f32>() / m;
        var[ch] = (0..n).flat_map(|b| (0..hw).map(move |p| (b, p))).map(|(b, p)| (x[at(b, ch, p)] - mean[ch]).powi(2)).sum::<f32>() / m;
    }
    let mut y = vec![0.0f32; 360];
    let mut dx = vec![0.0f32; 360];
    let (mut dgamma, mut dbeta) = (vec![0.0f32; c], vec![0.0f32; c]);
    for i in 0..360 {
        let ch = (i / hw) % c;
        let xhat = (x[i] - mean[ch]) / (var[ch] + eps).sqrt();
        y[i] = xhat * gamma[ch] + beta[ch];
        dgamma[ch] += dy[i] * xhat;
        dbeta[ch] += dy[i];
    }
    for i in 0..360 {
        let ch = (i / hw) % c;
        let inv = 1.0 / (var[ch] + eps).sqrt();
        let xhat = (x[i] - mean[ch]) * inv;
        dx[i] = gamma[ch] * inv / m * (m * dy[i] - dbeta[ch] - xhat * dgamma[ch]);
    }
    let (xg, dyg, gg, bg) = (dev.htod(&x).unwrap(), dev.htod(&dy).unwrap(), dev.htod(&gamma).unwrap(), dev.htod(&beta).unwrap());
    let (mut mg, mut vg) = (poisoned(&dev, c), poisoned(&dev, c));
    let (mut rm, mut rv) = (dev.htod(&vec![0.0; c]).unwrap(), dev.htod(&vec![1.0; c]).unwrap());
    batchnorm::bn_stats(&dev, &xg, shape, &mut mg, &mut vg, Some((&mut rm, &mut rv)), mom).unwrap();
    assert_close("bn mean", &dev.dtoh(&mg).unwrap(), &mean, F32_TOL);
    assert_close("bn var", &dev.dtoh(&vg).unwrap(), &var, F32_TOL);
    let want_rv: Vec<f32> = var.iter().map(|v| 0.9 + 0.1 * v * m / (m - 1.0)).collect();
    assert_close("bn running var", &dev.dtoh(&rv).unwrap(), &want_rv, F32_TOL);
    let mut yg = poisoned(&dev, 360);
    batchnorm::bn_fwd(&dev, &xg, shape, &mg, &vg, &gg, &bg, None, &mut yg, eps, false).unwrap();
    assert_close("bn fwd", &dev.dtoh(&yg).unwrap(), &y, F32_TOL);
    let (mut dxg, mut dgg, mut dbg) = (poisoned(&dev, 360), poisoned(&dev, c), poisoned(&dev, c));
    batchnorm::bn_bwd(&dev, &xg, &dyg, batchnorm::ReluMask::None, shape, &mg, &vg, &gg, eps, true, &mut dxg, &mut dgg, &mut dbg, None).unwrap();
    assert_close("bn dx", &dev.dtoh(&dxg).unwrap(), &dx, F32_TOL);
    assert_close("bn dgamma", &dev.dtoh(&dgg).unwrap(), &dgamma, F32_TOL);
    assert_close("bn dbeta", &dev.dtoh(&dbg).unwrap(), &dbeta, F32_TOL);
});

#[test]
fn gpu_maxpool_and_bilinear_resize_match_cpu() {
    let Some(dev) = gpu("gpu_maxpool_and_bilinear_resize_match_cpu") else { return };
    let mut r = rng(15);
    let (n, c, h, w) = (2, 3, 9, 8);
    let x = randn(&mut r, n * c * h * w);
    let xg = dev.htod(&x).unwrap();
    let (oh, ow) = pool::pool_out("t", h, w, 3, 2, 1).unwrap();
    let mut y = vec![f32::MIN; n * c * oh * ow];
    let mut arg = vec![0usize; y.len()];
    for pl in 0..n * c {
        for i in 0..oh {
            for j in 0..ow {
                for a in 0..3 {
                    for b in 0..3 {
                        let (hh, ww) = ((i * 2 + a) as isize - 1, (j * 2 + b) as isize - 1);
                        if hh >= 0 && ww >= 0 && (hh as usize) < h && (ww as usize) < w {
                            let v = x[pl * h * w + hh as usize * w + ww as usize];
                            let o = (pl * oh + i) * ow + j;
                            if v > y[o] {
                                y[o] = v;
                                arg[o] = pl * h * w + hh as usize * w + ww as usize;
                            }
                        }
                    }
                }
            }
        }
    }
    let dy = randn(&mut r, y.len());
    let mut dx = vec![0.0f32; x.len()];
    arg.iter().zip(&dy).for_each(|(&a, &g)| dx[a] += g);
    let (mut yg, mut idx) = (poisoned(&dev, y.len()), TypedBuffer::alloc(&dev, y.len()).unwrap());
    pool::maxpool_fwd(&dev, &xg, [n, c, h, w], 3, 2, 1, &mut yg, &mut idx).unwrap();
    assert_close("maxpool fwd", &dev.dtoh(&yg).unwrap(), &y, F32_TOL);
    let plane_offsets: Vec<u32> = arg.iter().map(|&a| (a % (h * w)) as u32).collect();
    assert_eq!(idx.to_host(&dev).unwrap(), plane_offsets, "maxpool winners");
    let mut dxg = poisoned(&dev, x.len());
    pool::maxpool_bwd(&dev, &dev.htod(&dy).unwrap(), &idx, [n, c, h, w], 3, 2, 1, &mut dxg).unwrap();
    assert_close("maxpool bwd", &dev.dtoh(&dxg).unwrap(), &dx, F32_TOL);

    for (oh, ow) in [(20, 13), (4, 3)] {
        let src = |o: usize, inn: usize, out: usize| {
            let s = ((o as f32 + 0.5) * inn as f32 / out as f32 - 0.5).max(0.0);
            let i0 = (s as usize).min(inn - 1);
            (i0, if i0 < inn - 1 { i0 + 1 } else { i0 }, s - i0 as f32)
        };
        let mut y = vec![0.0f32; n * c * oh * ow];
        let dy = randn(&mut r, y.len());
        let mut dx = vec![0.0f32; x.len()];
        for pl in 0..n * c {
            for i in 0..oh {
                let (h0, h1, lh) = src(i, h, oh);
                for j in 0..ow {
                    let (w0, w1, lw) = src(j, w, ow);
                    let o = (pl * oh + i) * ow + j;
                    let p = |a: usize, b: usize| pl * h * w + a * w + b;
                    let terms = [(p(h0, w0), (1.0 - lh) * (1.0 - lw)), (p(h0, w1), (1.0 - lh) * lw), (p(h1, w0), lh * (1.0 - lw)), (p(h1, w1), lh * lw)];
                    y[o] = terms.iter().map(|(q, wt)| wt * x[*q]).sum();
                    terms.iter().for_each(|(q, wt)| dx[*q] += wt * dy[o]);
                }
            }
        }
        let mut yg = poisoned(&dev, y.len());
        resize::resize_fwd(&dev, &xg, [n, c, h, w], oh, ow, &mut yg).unwrap();
        assert_close("resize fwd", &dev.dtoh(&yg).unwrap(), &y, F32_TOL);
        let mut dxg = poisoned(&dev, x.len());
        resize::resize_bwd(&dev, &dev.htod(&dy).unwrap(), [n, c, h, w], oh, ow, &mut dxg).unwrap();
        assert_close("resize bwd", &dev.dtoh(&dxg).unwrap(), &dx, F32_TOL);
    }
}

test_gpu!(gpu_losses_match_cpu, |dev| {
    let mut r = rng(16);
    let (n, h, w) = (2, 5, 7);
    let hw = h * w;
    let logits: Vec<f32> = randn(&mut r, n * 2 * hw).iter().map(|v| v * 3.0).collect();
    let target: Vec<f32> = randn(&mut r, n * hw).iter().map(|v| (*v > 0.0) as i32 as f32).collect();
    let mask: Vec<f32> = randn(&mut r, n * hw).iter().map(|v| (*v > -0.5) as i32 as f32).collect();
    let (mut sum, mut count) = (0.0f64, 0.0f64);
    let mut dl = vec![0.0f32; logits.len()];
    let counted: f32 = mask.iter().sum();
    for i in 0..n * hw {
        let (b, p) = (i / hw, i % hw);
        let (l0, l1) = (logits[2 * b * hw + p], logits[(2 * b + 1) * hw + p]);
        if mask[i] > 0.5 {
            let lse = l0.max(l1) + ((l0 - l0.max(l1)).exp() + (l1 - l0.max(l1)).exp()).ln();
            sum += (lse - if target[i] > 0.5 { l1 } else { l0 }) as f64;
            count += 1.0;
            let p1 = 1.0 / (1.0 + (l0 - l1).exp());
            dl[2 * b * hw + p] = 0.5 * ((1.0 - p1) - (1.0 - target[i])) / counted;
            dl[(2 * b + 1) * hw + p] = 0.5 * (p1 - target[i]) / counted;
        }
    }
    let (lg, tg, mg) = (dev.htod(&logits).unwrap(), dev.htod(&target).unwrap(), dev.htod(&mask).unwrap());
    let out = loss::ce2_fwd(&dev, &lg, &tg, Some(&mg), [n, h, w]).unwrap();
    assert_close("ce2 fwd", &dev.dtoh(&out.loss).unwrap(), &[(sum / count) as f32], F32_TOL);
    let mut dlg = poisoned(&dev, logits.len());
    loss::ce2_bwd(&dev, &lg, &tg, Some(&mg), [n, h, w], &out.count, &dev.htod(&[0.5]).unwrap(), &mut dlg).unwrap();
    assert_close("ce2 bwd", &dev.dtoh(&dlg).unwrap(), &dl, F32_TOL);

    let x = &logits[..n * hw];
    let want: f64 = x.iter().zip(&target).map(|(&v, &t)| (v.max(0.0) - v * t + (-v.abs()).exp().ln_1p()) as f64).sum::<f64>() / x.len() as f64;
    let xg = dev.htod(x).unwrap();
    assert_close("bce fwd", &dev.dtoh(&loss::bce_fwd(&dev, &xg, &tg).unwrap()).unwrap(), &[want as f32], F32_TOL);
    let dx: Vec<f32> = x.iter().zip(&target).map(|(&v, &t)| (1.0 / (1.0 + (-v).exp()) - t) * 2.0 / x.len() as f32).collect();
    let mut dxg = poisoned(&dev, x.len());
    loss::bce_bwd(&dev, &xg, &tg, &dev.htod(&[2.0]).unwrap(), &mut dxg).unwrap();
    assert_close("bce bwd", &dev.dtoh(&dxg).unwrap(), &dx, F32_TOL);
});

test_gpu!(gpu_channel_conv1d_matches_cpu, |dev| {
    let mut r = rng(17);
    let (n, c, k) = (3, 37, 5);
    let (x, w, dy) = (randn(&mut r, n * c), randn(&mut r, k), randn(&mut r, n * c));
    let p = (k - 1) / 2;
    let (mut y, mut dx, mut dw) = (vec![0.0f32; n * c], vec![0.0f32; n * c], vec![0.0f32; k]);
    for b in 0..n {
        for ch in 0..c {
            for j in 0..k {
                let src = ch as isize + j as isize - p as isize;
                if src >= 0 && (src as usize) < c {
                    y[b * c + ch] += w[j] * x[b * c + src as usize];
                    dx[b * c + src as usize] += w[j] * dy[b * c + ch];
                    dw[j] += dy[b * c + ch] * x[b * c + src as usize];
                }
            }
        }
    }
    let (xg, wg, dyg) = (dev.htod(&x).unwrap(), dev.htod(&w).unwrap(), dev.htod(&dy).unwrap());
    let mut yg = poisoned(&dev, n * c);
    conv::conv1d_fwd(&dev, &xg, n, c, &wg, &mut yg).unwrap();
    assert_close("conv1d fwd", &dev.dtoh(&yg).unwrap(), &y, F32_TOL);
    let (mut dxg, mut dwg) = (poisoned(&dev, n * c), poisoned(&dev, k));
    conv::conv1d_bwd(&dev, &xg, &dyg, n, c, &wg, &mut dxg, &mut dwg).unwrap();
    assert_close("conv1d dx", &dev.dtoh(&dxg).unwrap(), &dx, F32_TOL);
    assert_close("conv1d dw", &dev.dtoh(&dwg).unwrap(), &dw, F32_TOL);

});

test_gpu!(gpu_optimisers_match_a_cpu_reference_over_steps, |dev| {
    let mut r = rng(18);
    let sizes = [5, 20_000, 300]; // the middle one spans two chunks
    let params: Vec<Vec<f32>> = sizes.iter().map(|&n| randn(&mut r, n)).collect();
    let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| randn(&mut r, n)).collect();
    let (lr, mom, wd, b1, b2, eps) = (0.05f32, 0.9f32, 1e-3f32, 0.9f32, 0.999f32, 1e-8f32);
    for adam in [false, true] {
        let mut p_cpu = params.clone();
        let mut s1: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
        let mut s2 = s1.clone();
        let mut pg: Vec<_> = params.iter().map(|p| dev.htod(p).unwrap()).collect();
        let gg: Vec<_> = grads.iter().map(|g| dev.htod(g).unwrap()).collect();
        let mut s1g: Vec<_> = sizes.iter().map(|&n| dev.htod(&vec![0.0; n]).unwrap()).collect();
        let mut s2g: Vec<_> = sizes.iter().map(|&n| dev.htod(&vec![0.0; n]).unwrap()).collect();
        let mut opt = optim::GpuOptimizer::default();
        for step in 1..=3u32 {
            for t in 0..sizes.len() {
                for i in 0..sizes[t] {
                    let g = grads[t][i] + wd * p_cpu[t][i];
                    if adam {
                        s1[t][i] = b1 * s1[t][i] + (1.0 - b1) * g;
                        s2[t][i] = b2 * s2[t][i] + (1.0 - b2) * g * g;
                        let (bc1, bc2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
                        p_cpu[t][i] -= lr * (s1[t][i] / bc1) / ((s2[t][i] / bc2).sqrt() + eps);
                    } else {
                        s1[t][i] = mom * s1[t][i] + g;
                        p_cpu[t][i] -= lr * s1[t][i];
                    }
                }
            }
            let mut slots: Vec<optim::ParamSlot> = pg
                .iter_mut()
                .zip(&gg)
                .zip(s1g.iter_mut().zip(s2g.iter_mut()))
                .map(|((param, grad), (state1, state2))| optim::ParamSlot { param, grad, state1, state2: Some(state2) })
                .collect();
            if adam {
                opt.adam_step(&dev, &mut slots, optim::StepHyper::Host { lr, step }, b1, b2, eps, wd).unwrap();
            } else {
                opt.sgd_step(&dev, &mut slots, optim::StepHyper::Host { lr, step: 0 }, mom, wd).unwrap();
            }
        }
        for t in 0..sizes.len() {
            assert_close(&format!("{} param {t}", if adam { "adam" } else { "sgd" }), &dev.dtoh(&pg[t]).unwrap(), &p_cpu[t], F32_TOL);
        }
    }
});
