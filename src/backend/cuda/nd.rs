//! Any-rank element-wise work on the GPU (kernels/nd.cu): unary maps and their gradients picked
//! by [`MapOp`], broadcast binary ops and strided copies. The geometry comes from
//! [`geometry`], which merges dims the way the CPU kernels do (`ops::Walk`), so a broadcast of
//! any rank runs as long as at most [`MAX_DIMS`] non-mergeable dims remain.

use super::alloc::GpuBuffer;
use super::context::CudaDevice;
use super::elementwise::BinaryOp;
use super::kernels::{self as k, Kernel};
use super::launch::{Arg, MAX_DIMS, StridedN, THREADS, grid_1d, launch, to_i32};
use crate::error::{Error, Result};
use crate::ops::Walk;
use cudarc::driver::LaunchConfig;

/// An element-wise map with the CPU op's formula (forward and backward).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MapOp {
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    Log,
    Sqrt,
    Sqr,
    Abs,
    Clamp { lo: f32, hi: f32 },
    Pow(f32),
}

impl MapOp {
    /// nd.cu's op code and constants.
    fn code(self) -> (i32, f32, f32) {
        match self {
            MapOp::Relu => (0, 0.0, 0.0),
            MapOp::Sigmoid => (1, 0.0, 0.0),
            MapOp::Tanh => (2, 0.0, 0.0),
            MapOp::Exp => (3, 0.0, 0.0),
            MapOp::Log => (4, 0.0, 0.0),
            MapOp::Sqrt => (5, 0.0, 0.0),
            MapOp::Sqr => (6, 0.0, 0.0),
            MapOp::Abs => (7, 0.0, 0.0),
            MapOp::Clamp { lo, hi } => (8, lo, hi),
            MapOp::Pow(p) => (9, p, 0.0),
        }
    }
}

/// The kernels' geometry for a walk over `dims` reading the first operand at `ox + sx . i` and
/// the second at `oy + sy . i` (strides in elements, 0 = broadcast), with dims merged.
pub fn geometry(
    op: &'static str,
    dims: &[usize],
    sx: &[usize],
    sy: &[usize],
    ox: usize,
    oy: usize,
) -> Result<StridedN> {
    if sx.len() != dims.len() || sy.len() != dims.len() {
        return Err(Error::shape(
            op,
            format!("strides {sx:?} and {sy:?} do not fit dims {dims:?}"),
        ));
    }
    let walk = Walk::new(dims, vec![sx.to_vec(), sy.to_vec()]);
    if walk.dims.len() > MAX_DIMS {
        return Err(Error::invalid(
            op,
            format!(
                "dims {dims:?} leave {} non-mergeable dims; the GPU kernels take at most {MAX_DIMS}",
                walk.dims.len()
            ),
        ));
    }
    to_i32(op, "elements", dims.iter().product())?;
    let mut g = StridedN {
        rank: walk.dims.len() as i32,
        ox: to_i32(op, "offset", ox)?,
        oy: to_i32(op, "offset", oy)?,
        ..Default::default()
    };
    for (i, &d) in walk.dims.iter().enumerate() {
        g.dims[i] = to_i32(op, "dim", d)?;
        g.sx[i] = to_i32(op, "stride", walk.strides[0][i])?;
        g.sy[i] = to_i32(op, "stride", walk.strides[1][i])?;
    }
    Ok(g)
}

fn numel(g: &StridedN) -> usize {
    g.dims[..g.rank as usize]
        .iter()
        .map(|&d| d as usize)
        .product()
}

/// Checks that every offset the walk reaches through `strides` from `base` lies in a buffer of `len`.
fn check_reach(
    op: &'static str,
    what: &str,
    len: usize,
    g: &StridedN,
    strides: &[i32; MAX_DIMS],
    base: i32,
) -> Result<()> {
    if numel(g) == 0 {
        return Ok(());
    }
    let last: usize = base as usize
        + (0..g.rank as usize)
            .map(|i| (g.dims[i] as usize - 1) * strides[i] as usize)
            .sum::<usize>();
    if last >= len {
        return Err(Error::shape(
            op,
            format!("{what} has {len} elements, the walk {g:?} reaches element {last}"),
        ));
    }
    Ok(())
}

/// y (dense, the walk's element count) = a op b, a read through (ox, sx) and b through (oy, sy).
pub fn binary(
    dev: &CudaDevice,
    op: BinaryOp,
    a: &GpuBuffer,
    b: &GpuBuffer,
    y: &mut GpuBuffer,
    g: &StridedN,
) -> Result<()> {
    let name = k::BINARY_ND_FWD.name;
    check_reach(name, "a", a.len(), g, &g.sx, g.ox)?;
    check_reach(name, "b", b.len(), g, &g.sy, g.oy)?;
    let n = numel(g);
    if y.len() != n {
        return Err(Error::shape(
            name,
            format!("y has {} elements, the walk {g:?} writes {n}", y.len()),
        ));
    }
    let args = [
        Arg::Ptr(a.ptr()),
        Arg::Ptr(b.ptr()),
        Arg::Ptr(y.ptr_mut()),
        Arg::I32(n as i32),
        Arg::I32(op as i32),
        Arg::Struct(g),
    ];
    launch(dev, k::BINARY_ND_FWD, grid_1d(dev, n), &args)
}

/// y[oy + sy . i] = x[ox + sx . i] for every index i of the walk. A walk that transposes a
/// matrix (or a batch of them, [`as_transpose`]) runs nd.cu's tiled `transpose_f32`, the others
/// `copy_nd_fwd_f32`.
pub fn copy(dev: &CudaDevice, x: &GpuBuffer, y: &mut GpuBuffer, g: &StridedN) -> Result<()> {
    check_copy(g, x, y)?;
    match as_transpose(g) {
        Some([b, r, c]) => {
            let cfg = LaunchConfig { grid_dim: (c.div_ceil(32) as u32, r.div_ceil(32) as u32, b as u32), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
            let args = [Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr_mut()), Arg::I32(r as i32), Arg::I32(c as i32), Arg::I32(g.ox), Arg::I32(g.oy)];
            launch(dev, k::TRANSPOSE, cfg, &args)
        }
        None => launch_copy_nd(dev, x, y, g),
    }
}

/// [`copy`] on `copy_nd_fwd_f32` whatever the walk (one thread per element, in the output's
/// order): what transposes ran on before the tiled kernel, kept public so that benches/conv_gpu.rs
/// times the two side by side.
pub fn copy_elementwise(dev: &CudaDevice, x: &GpuBuffer, y: &mut GpuBuffer, g: &StridedN) -> Result<()> {
    check_copy(g, x, y)?;
    launch_copy_nd(dev, x, y, g)
}

/// Both operands hold every element the walk reaches.
fn check_copy(g: &StridedN, x: &GpuBuffer, y: &GpuBuffer) -> Result<()> {
    let name = k::COPY_ND_FWD.name;
    check_reach(name, "x", x.len(), g, &g.sx, g.ox)?;
    check_reach(name, "y", y.len(), g, &g.sy, g.oy)
}

fn launch_copy_nd(dev: &CudaDevice, x: &GpuBuffer, y: &mut GpuBuffer, g: &StridedN) -> Result<()> {
    let n = numel(g);
    let args = [Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr_mut()), Arg::I32(n as i32), Arg::Struct(g)];
    launch(dev, k::COPY_ND_FWD, grid_1d(dev, n), &args)
}

/// [b, r, c] when the walk `g` copies x (B, R, C) into y (B, C, R), both contiguous from their
/// base offsets and C and R above 1: the walk runs over one operand's layout, (B, C, R) when it
/// writes y in order and reads x across, or (B, R, C) when it reads x in order and writes y
/// across (a reorder and its way back). Grids past 65535 batches or row tiles stay with copy_nd.
pub fn as_transpose(g: &StridedN) -> Option<[usize; 3]> {
    let rank = usize::try_from(g.rank).ok().filter(|r| (2..=3).contains(r))?;
    let dims: Vec<usize> = g.dims[..rank].iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
    let strides = |s: &[i32; MAX_DIMS]| s[..rank].iter().map(|&v| usize::try_from(v).ok()).collect::<Option<Vec<usize>>>();
    let (sx, sy) = (strides(&g.sx)?, strides(&g.sy)?);
    let (d1, d2) = (dims[rank - 2], dims[rank - 1]);
    let b = if rank == 3 { dims[0] } else { 1 };
    let matrix = d1 * d2;
    // Row-major over (.., d1, d2), or with the last two axes swapped (column-major).
    let rows = |s: &[usize]| s[rank - 1] == 1 && s[rank - 2] == d2 && (rank == 2 || s[0] == matrix);
    let cols = |s: &[usize]| s[rank - 2] == 1 && s[rank - 1] == d1 && (rank == 2 || s[0] == matrix);
    let [r, c] = if rows(&sy) && cols(&sx) {
        [d2, d1] // y (B, d1, d2) in order from x (B, d2, d1)
    } else if rows(&sx) && cols(&sy) {
        [d1, d2] // x (B, d1, d2) in order into y (B, d2, d1)
    } else {
        return None;
    };
    let fits = b <= 65535 && r.div_ceil(32) <= 65535;
    (fits && r > 1 && c > 1).then_some([b, r, c])
}

fn same_len(op: &'static str, bufs: &[(&str, &GpuBuffer)]) -> Result<i32> {
    let n = bufs[0].1.len();
    if let Some((name, b)) = bufs.iter().find(|(_, b)| b.len() != n) {
        return Err(Error::shape(
            op,
            format!("{name} has {} elements, {} has {n}", b.len(), bufs[0].0),
        ));
    }
    to_i32(op, "elements", n)
}

/// y = f(x) element-wise.
pub fn map_fwd(dev: &CudaDevice, op: MapOp, x: &GpuBuffer, y: &mut GpuBuffer) -> Result<()> {
    launch_map(dev, k::MAP_FWD, op, &[("x", x)], ("y", y))
}

/// dx = f'(x, y) dy element-wise, from the forward's input x and output y.
pub fn map_bwd(
    dev: &CudaDevice,
    op: MapOp,
    x: &GpuBuffer,
    y: &GpuBuffer,
    dy: &GpuBuffer,
    dx: &mut GpuBuffer,
) -> Result<()> {
    launch_map(dev, k::MAP_BWD, op, &[("x", x), ("y", y), ("dy", dy)], ("dx", dx))
}

/// Launches a map kernel, whose arguments are its buffers (those it reads, then the one it
/// writes), their common length, and `op`'s code and parameters.
fn launch_map(
    dev: &CudaDevice,
    kernel: Kernel,
    op: MapOp,
    read: &[(&str, &GpuBuffer)],
    (out_name, out): (&str, &mut GpuBuffer),
) -> Result<()> {
    let mut all = read.to_vec();
    all.push((out_name, out));
    let n = same_len(kernel.name, &all)?;
    let (code, p, q) = op.code();
    let mut args: Vec<Arg> = read.iter().map(|(_, b)| Arg::Ptr(b.ptr())).collect();
    args.extend([Arg::Ptr(out.ptr_mut()), Arg::I32(n), Arg::I32(code), Arg::F32(p), Arg::F32(q)]);
    launch(dev, kernel, grid_1d(dev, read[0].1.len()), &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// copy_nd's meaning of a walk, on the host: y[oy + sy . i] = x[ox + sx . i].
    fn walk_copy(g: &StridedN, x: &[f32], y: &mut [f32]) {
        let rank = g.rank as usize;
        let n: usize = g.dims[..rank].iter().map(|&d| d as usize).product();
        for i in 0..n {
            let (mut rest, mut ix, mut iy) = (i, g.ox as usize, g.oy as usize);
            for d in (0..rank).rev() {
                let c = rest % g.dims[d] as usize;
                rest /= g.dims[d] as usize;
                ix += c * g.sx[d] as usize;
                iy += c * g.sy[d] as usize;
            }
            y[iy] = x[ix];
        }
    }

    /// transpose_f32's meaning (kernels/nd.cu): y[oy + (b*C + c)*R + r] = x[ox + (b*R + r)*C + c].
    fn tiled_copy([b, r, c]: [usize; 3], ox: usize, oy: usize, x: &[f32], y: &mut [f32]) {
        for bb in 0..b {
            for rr in 0..r {
                for cc in 0..c {
                    y[oy + (bb * c + cc) * r + rr] = x[ox + (bb * r + rr) * c + cc];
                }
            }
        }
    }

    /// Every walk `as_transpose` takes is copied by transpose_f32 exactly as copy_nd would copy
    /// it: the convolutions' weight reorders to (K, R, S, C) and (C, R, S, K) and back, a batched
    /// and a plain matrix transpose, with base offsets.
    #[test]
    fn transposing_walks_go_to_the_tiled_kernel_and_mean_the_same_copy() {
        let (k, c, rs) = (5, 7, 9);
        let cases: [(&[usize], &[usize], &[usize], usize, usize); 8] = [
            (&[k, rs, c], &[c * rs, 1, rs], &[rs * c, c, 1], 0, 0), // (K, C, RS) -> (K, RS, C)
            (&[c, rs, k], &[rs, 1, c * rs], &[rs * k, k, 1], 0, 0), // -> (C, RS, K)
            (&[k, c, rs], &[c * rs, 1, c], &[c * rs, rs, 1], 0, 0), // (K, RS, C) -> (K, C, RS)
            (&[k, c, rs], &[1, rs * k, k], &[c * rs, rs, 1], 0, 0), // (C, RS, K) -> (K, C, RS)
            (&[3, 40, 33], &[1320, 1, 40], &[1320, 33, 1], 5, 2),
            (&[70, 2], &[1, 70], &[2, 1], 1, 3),
            (&[k, rs, c], &[rs * c, c, 1], &[c * rs, 1, rs], 0, 0), // walked in (K, RS, C): back to (K, C, RS)
            (&[c, rs, k], &[rs * k, k, 1], &[rs, 1, c * rs], 2, 1), // walked in (C, RS, K): back
        ];
        for (dims, sx, sy, ox, oy) in cases {
            let g = geometry("t", dims, sx, sy, ox, oy).unwrap();
            let shape = as_transpose(&g).unwrap_or_else(|| panic!("{dims:?} {sx:?} -> {sy:?}: not taken as a transpose"));
            let n: usize = dims.iter().product();
            let x: Vec<f32> = (0..n + ox).map(|i| i as f32 * 0.5 - 3.0).collect();
            let (mut want, mut got) = (vec![f32::NAN; n + oy], vec![f32::NAN; n + oy]);
            walk_copy(&g, &x, &mut want);
            tiled_copy(shape, ox, oy, &x, &mut got);
            assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{dims:?}");
        }
    }

    /// Walks that do not transpose stay with copy_nd: a permute that keeps the contiguous axis
    /// innermost ((K, C, RS) -> (C, K, RS)), a broadcast, a plain contiguous copy.
    #[test]
    fn other_walks_are_not_transposes() {
        let (k, c, rs) = (5, 7, 9);
        let ckrs = geometry("t", &[c, k, rs], &[rs, c * rs, 1], &[k * rs, rs, 1], 0, 0).unwrap();
        let broadcast = geometry("t", &[4, 6], &[0, 1], &[6, 1], 0, 0).unwrap();
        let plain = geometry("t", &[4, 6], &[6, 1], &[6, 1], 0, 0).unwrap();
        for g in [ckrs, broadcast, plain] {
            assert_eq!(as_transpose(&g), None, "{g:?}");
        }
    }

    #[test]
    fn geometry_merges_and_offsets() {
        // (2,3,4,5) + (1,3,1,1): nothing merges across the broadcast channel axis.
        let g = geometry("t", &[2, 3, 4, 5], &[60, 20, 5, 1], &[0, 1, 0, 0], 0, 0).unwrap();
        assert_eq!(g.rank, 3);
        assert_eq!(
            (&g.dims[..3], &g.sx[..3], &g.sy[..3]),
            (&[2, 3, 20][..], &[60, 20, 1][..], &[0, 1, 0][..])
        );
        // A narrow of axis 1 (start 2) of a (4,6,5) tensor: input strides with an offset, dense out.
        let g = geometry("t", &[4, 3, 5], &[30, 5, 1], &[15, 5, 1], 10, 0).unwrap();
        assert_eq!(
            (g.rank, g.ox, &g.dims[..2], &g.sx[..2], &g.sy[..2]),
            (2, 10, &[4, 15][..], &[30, 1][..], &[15, 1][..])
        );
        check_reach("t", "x", 120, &g, &g.sx, g.ox).unwrap();
        let e = check_reach("t", "x", 100, &g, &g.sx, g.ox)
            .unwrap_err()
            .to_string();
        assert!(e.contains("reaches element 114"), "{e}");
        // Seven alternating broadcast axes cannot merge below 7 dims.
        let dims = [2usize; 7];
        let sx: Vec<usize> = (0..7)
            .map(|i| if i % 2 == 0 { 1 << (6 - i) } else { 0 })
            .collect();
        let sy: Vec<usize> = (0..7).map(|i| 1 << (6 - i)).collect();
        assert!(
            geometry("add", &dims, &sx, &sy, 0, 0)
                .unwrap_err()
                .to_string()
                .contains("at most 6")
        );
    }
}
