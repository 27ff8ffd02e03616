//! The kernels of `kernels/*.cu` as embedded by build.rs, and the table of every kernel the
//! launch wrappers use (module = file stem, name = `<op>_<fwd|bwd>[_tile]_<f32|tf32|bf16>`).

/// How build.rs embedded the kernels: PTX from nvcc, or CUDA source for NVRTC at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    Ptx,
    Source,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The architecture a module was built for: its own (`MODULE_ARCH`, from a `// coseg-arch:` first
/// line: conv2d_wgmma.cu's compute_90a) or the build's.
pub fn module_arch(module: &str) -> &'static str {
    MODULE_ARCH.iter().find(|(name, _)| *name == module).map_or(KERNEL_ARCH, |(_, arch)| *arch)
}

/// The embedded text (PTX or source) of one module.
pub fn module_text(module: &str) -> Option<&'static str> {
    MODULES.iter().find(|(name, _)| *name == module).map(|(_, text)| *text)
}

/// One kernel: the module (`kernels/<module>.cu`) and its `extern "C"` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    pub module: &'static str,
    pub name: &'static str,
}

macro_rules! kernels {
    ($($module:literal: $($konst:ident = $name:literal),+;)+) => {
        $($(pub const $konst: Kernel = Kernel { module: $module, name: $name };)+)+
        /// Every kernel the launch wrappers use.
        pub const ALL: &[Kernel] = &[$($($konst),+),+];
        /// Every kernel with the name of its constant here (for the test that each has a caller).
        #[cfg(test)]
        const NAMED: &[(&str, Kernel)] = &[$($((stringify!($konst), $konst)),+),+];
    };
}

kernels! {
    "elementwise":
        AFFINE_FWD = "affine_fwd_f32", FILL_FWD = "fill_fwd_f32";
    "reduce":
        REDUCE_SUM_BLOCK = "reduce_sum_block_f32", REDUCE_SUM_THREAD = "reduce_sum_thread_f32", SUM_SPLITS = "sum_splits_f32",
        SOFTMAX_FWD = "softmax_fwd_f32", SOFTMAX_BWD = "softmax_bwd_f32",
        SOFTMAX_ROWS_FWD = "softmax_rows_fwd_f32", SOFTMAX_ROWS_BWD = "softmax_rows_bwd_f32";
    "batchnorm":
        BN_STATS = "bn_stats_f32", BN_STATS_PARTIALS = "bn_stats_partials_f32", BN_FWD = "bn_fwd_f32", BN_BWD_REDUCE = "bn_bwd_reduce_f32",
        BN_BWD_DX = "bn_bwd_dx_f32";
    "pool":
        MAXPOOL_FWD = "maxpool_fwd_f32", MAXPOOL_BWD = "maxpool_bwd_f32",
        RESIZE_FWD = "resize_bilinear_fwd_f32", RESIZE_BWD = "resize_bilinear_bwd_f32";
    "loss":
        CE2_FWD = "ce2_fwd_f32", CE2_BWD = "ce2_bwd_f32", BCE_FWD = "bce_fwd_f32", BCE_BWD = "bce_bwd_f32";
    "conv1d":
        CONV1D_FWD = "conv1d_fwd_f32", CONV1D_BWD_INPUT = "conv1d_bwd_input_f32",
        CONV1D_BWD_WEIGHT = "conv1d_bwd_weight_f32";
    "conv2d":
        CONV2D_FWD = "conv2d_fwd_f32", CONV2D_BWD_INPUT = "conv2d_bwd_input_f32",
        CONV2D_BWD_WEIGHT = "conv2d_bwd_weight_f32";
    "conv2d_tc":
        CONV2D_FWD_128X128_TF32 = "conv2d_fwd_128x128_tf32", CONV2D_FWD_64X128_TF32 = "conv2d_fwd_64x128_tf32",
        CONV2D_FWD_128X64_TF32 = "conv2d_fwd_128x64_tf32", CONV2D_FWD_128X128_BF16 = "conv2d_fwd_128x128_bf16",
        CONV2D_FWD_64X128_BF16 = "conv2d_fwd_64x128_bf16", CONV2D_FWD_128X64_BF16 = "conv2d_fwd_128x64_bf16",
        CONV2D_BWD_INPUT_128X128_TF32 = "conv2d_bwd_input_128x128_tf32",
        CONV2D_BWD_INPUT_64X128_TF32 = "conv2d_bwd_input_64x128_tf32",
        CONV2D_BWD_INPUT_128X64_TF32 = "conv2d_bwd_input_128x64_tf32",
        CONV2D_BWD_INPUT_128X128_BF16 = "conv2d_bwd_input_128x128_bf16",
        CONV2D_BWD_INPUT_64X128_BF16 = "conv2d_bwd_input_64x128_bf16",
        CONV2D_BWD_INPUT_128X64_BF16 = "conv2d_bwd_input_128x64_bf16",
        CONV2D_BWD_WEIGHT_128X128_TF32 = "conv2d_bwd_weight_128x128_tf32",
        CONV2D_BWD_WEIGHT_64X128_TF32 = "conv2d_bwd_weight_64x128_tf32",
        CONV2D_BWD_WEIGHT_128X64_TF32 = "conv2d_bwd_weight_128x64_tf32",
        CONV2D_BWD_WEIGHT_128X128_BF16 = "conv2d_bwd_weight_128x128_bf16",
        CONV2D_BWD_WEIGHT_64X128_BF16 = "conv2d_bwd_weight_64x128_bf16",
        CONV2D_BWD_WEIGHT_128X64_BF16 = "conv2d_bwd_weight_128x64_bf16";
    "conv2d_tcp":
        CONV2D_PIPE_FWD_128X128_TF32 = "conv2d_pipe_fwd_128x128_tf32",
        CONV2D_PIPE_FWD_64X128_TF32 = "conv2d_pipe_fwd_64x128_tf32",
        CONV2D_PIPE_FWD_128X64_TF32 = "conv2d_pipe_fwd_128x64_tf32",
        CONV2D_PIPE_FWD_128X128_BF16 = "conv2d_pipe_fwd_128x128_bf16",
        CONV2D_PIPE_FWD_64X128_BF16 = "conv2d_pipe_fwd_64x128_bf16",
        CONV2D_PIPE_FWD_128X64_BF16 = "conv2d_pipe_fwd_128x64_bf16",
        CONV2D_PIPE_BWD_INPUT_128X128_TF32 = "conv2d_pipe_bwd_input_128x128_tf32",
        CONV2D_PIPE_BWD_INPUT_64X128_TF32 = "conv2d_pipe_bwd_input_64x128_tf32",
        CONV2D_PIPE_BWD_INPUT_128X64_TF32 = "conv2d_pipe_bwd_input_128x64_tf32",
        CONV2D_PIPE_BWD_INPUT_128X128_BF16 = "conv2d_pipe_bwd_input_128x128_bf16",
        CONV2D_PIPE_BWD_INPUT_64X128_BF16 = "conv2d_pipe_bwd_input_64x128_bf16",
        CONV2D_PIPE_BWD_INPUT_128X64_BF16 = "conv2d_pipe_bwd_input_128x64_bf16",
        CONV2D_PIPE_BWD_WEIGHT_128X128_TF32 = "conv2d_pipe_bwd_weight_128x128_tf32",
        CONV2D_PIPE_BWD_WEIGHT_64X128_TF32 = "conv2d_pipe_bwd_weight_64x128_tf32",
        CONV2D_PIPE_BWD_WEIGHT_128X64_TF32 = "conv2d_pipe_bwd_weight_128x64_tf32",
        CONV2D_PIPE_BWD_WEIGHT_128X128_BF16 = "conv2d_pipe_bwd_weight_128x128_bf16",
        CONV2D_PIPE_BWD_WEIGHT_64X128_BF16 = "conv2d_pipe_bwd_weight_64x128_bf16",
        CONV2D_PIPE_BWD_WEIGHT_128X64_BF16 = "conv2d_pipe_bwd_weight_128x64_bf16";
    "conv2d_nhwc":
        NCHW_TO_NHWC_BF16 = "nchw_to_nhwc_bf16", BN_RELU_NCHW_TO_NHWC_BF16 = "bn_relu_nchw_to_nhwc_bf16",
        CONV2D_NHWC_FWD_128X128_BF16 = "conv2d_nhwc_fwd_128x128_bf16",
        CONV2D_NHWC_FWD_64X128_BF16 = "conv2d_nhwc_fwd_64x128_bf16",
        CONV2D_NHWC_FWD_128X64_BF16 = "conv2d_nhwc_fwd_128x64_bf16",
        CONV2D_NHWC_BWD_INPUT_128X128_BF16 = "conv2d_nhwc_bwd_input_128x128_bf16",
        CONV2D_NHWC_BWD_INPUT_64X128_BF16 = "conv2d_nhwc_bwd_input_64x128_bf16",
        CONV2D_NHWC_BWD_INPUT_128X64_BF16 = "conv2d_nhwc_bwd_input_128x64_bf16",
        CONV2D_NHWC_BWD_WEIGHT_128X128_BF16 = "conv2d_nhwc_bwd_weight_128x128_bf16",
        CONV2D_NHWC_BWD_WEIGHT_64X128_BF16 = "conv2d_nhwc_bwd_weight_64x128_bf16",
        CONV2D_NHWC_BWD_WEIGHT_128X64_BF16 = "conv2d_nhwc_bwd_weight_128x64_bf16",
        CONV2D_NHWC_FWD_64X64_BF16 = "conv2d_nhwc_fwd_64x64_bf16",
        CONV2D_NHWC_BWD_INPUT_64X64_BF16 = "conv2d_nhwc_bwd_input_64x64_bf16",
        CONV2D_NHWC_BWD_WEIGHT_64X64_BF16 = "conv2d_nhwc_bwd_weight_64x64_bf16";
    "conv2d_wgmma":
        CONV2D_WGMMA_FWD_128X128_BF16 = "conv2d_wgmma_fwd_128x128_bf16",
        CONV2D_WGMMA_BWD_INPUT_128X128_BF16 = "conv2d_wgmma_bwd_input_128x128_bf16",
        CONV2D_WGMMA_BWD_WEIGHT_128X128_BF16 = "conv2d_wgmma_bwd_weight_128x128_bf16";
    "optim":
        SGD_FWD = "sgd_fwd_f32", ADAM_FWD = "adam_fwd_f32", TRAIN_MONITOR = "train_monitor_f32";
    "crf":
        CRF_FEATURES_SPATIAL = "crf_features_spatial_f32", CRF_FEATURES_BILATERAL = "crf_features_bilateral_f32",
        LATTICE_EMBED_D2 = "lattice_embed_d2_f32", LATTICE_EMBED_D5 = "lattice_embed_d5_f32",
        LATTICE_COMPACT = "lattice_compact_f32", LATTICE_FINISH = "lattice_finish_f32",
        LATTICE_SPLAT = "lattice_splat_f32", LATTICE_SLICE = "lattice_slice_f32", LATTICE_BLUR = "lattice_blur_f32",
        CRF_DENSITY_SPLAT = "crf_density_splat_f32", CRF_NORM = "crf_norm_f32", CRF_START = "crf_start_f32",
        CRF_STEP = "crf_step_f32", CRF_FLAGS = "crf_flags_f32";
    "attention":
        CSA_POOL_FWD = "csa_pool_fwd_f32", CSA_POOL_BWD = "csa_pool_bwd_f32", CSA_GATE_FWD = "csa_gate_fwd_f32",
        CSA_GATE_BWD = "csa_gate_bwd_f32", CSA_FINISH = "csa_finish_f32", SE_HIDDEN = "se_hidden_f32",
        SE_GATE = "se_gate_f32", SE_BWD_GATE = "se_bwd_gate_f32", SE_BWD_HIDDEN = "se_bwd_hidden_f32",
        SE_BWD_INPUT = "se_bwd_input_f32", ECA_GATE = "eca_gate_f32", ECA_BWD_INPUT = "eca_bwd_input_f32",
        ECA_BWD_WEIGHT = "eca_bwd_weight_f32";
    "danet":
        PAM_FWD = "pam_fwd_f32", PAM_BWD = "pam_bwd_f32", PAM_BWD_DELTA = "pam_bwd_delta_f32";
    "danet_tc":
        PAM_FWD_TF32 = "pam_fwd_tf32", PAM_BWD_TF32 = "pam_bwd_tf32";
    "nd":
        BINARY_ND_FWD = "binary_nd_fwd_f32", COPY_ND_FWD = "copy_nd_fwd_f32", MAP_FWD = "map_fwd_f32",
        MAP_BWD = "map_bwd_f32", TRANSPOSE = "transpose_f32";
}

/// Kernel names end with the precision of their arithmetic: `_f32`, or `_tf32` / `_bf16` for the
/// tensor-core kernels (which read and write f32 too).
fn is_kernel_name(name: &str) -> bool {
    ["_f32", "_tf32", "_bf16"].iter().any(|suffix| name.ends_with(suffix))
}

/// The kernel entry points a module defines: `.entry NAME(` in PTX, or
/// `extern "C" __global__ void NAME(` (possibly through a macro such as `BINARY_FWD(NAME, ..)`) in source.
pub fn entry_points(module: &str) -> Vec<String> {
    let Some(text) = module_text(module) else { return Vec::new() };
    match KERNEL_FORMAT {
        KernelFormat::Ptx => text
            .lines()
            .filter_map(|l| l.trim().strip_prefix(".visible .entry "))
            .map(|l| l.split('(').next().unwrap_or_default().trim().to_string())
            .collect(),
        KernelFormat::Source => {
            let mut names = Vec::new();
            for line in text.lines().map(str::trim) {
                if line.starts_with("#define") {
                    continue;
                }
                for part in line.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                    if is_kernel_name(part) && !names.iter().any(|n: &String| n == part) {
                        names.push(part.to_string());
                    }
                }
            }
            names
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The library's source outside this table and outside test modules (which sit at the end of
    /// a file, after `#[cfg(test)]`), for the caller check.
    fn library_source() -> String {
        fn walk(dir: &std::path::Path, out: &mut String) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let p = entry.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("backend/cuda/kernels.rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    out.push_str(text.split("#[cfg(test)]").next().unwrap_or_default());
                }
            }
        }
        let mut out = String::new();
        walk(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
        out
    }

    // Runs without a GPU: every kernel in kernels/ has a caller in the library itself, not only in
    // tests (a kernel that only a test launches is dead code, and goes).
    #[test]
    fn every_kernel_has_a_caller_outside_the_tests() {
        let src = library_source();
        let is_word = |c: char| c.is_alphanumeric() || c == '_';
        for (konst, k) in NAMED {
            let used = src.match_indices(konst).any(|(i, _)| {
                let before = src[..i].chars().next_back().is_none_or(|c| !is_word(c));
                let after = src[i + konst.len()..].chars().next().is_none_or(|c| !is_word(c));
                before && after
            });
            assert!(used, "kernel {} ({konst}) is launched nowhere in src/ outside tests", k.name);
        }
    }

    // Runs without a GPU: what the wrappers launch must exist in what build.rs embedded, and every
    // kernel in kernels/ must be in the table above.
    #[test]
    fn every_wrapper_kernel_is_embedded_and_every_kernel_is_used() {
        for k in ALL {
            assert!(module_text(k.module).is_some(), "module {} not embedded", k.module);
            let entries = entry_points(k.module);
            assert!(entries.iter().any(|e| e == k.name), "{} missing from module {}: {entries:?}", k.name, k.module);
        }
        if KERNEL_FORMAT == KernelFormat::Ptx {
            for (module, _) in MODULES {
                for entry in entry_points(module) {
                    assert!(ALL.iter().any(|k| k.name == entry), "kernel {entry} in {module}.cu has no wrapper");
                }
            }
        }
        let dir = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels")).unwrap();
        let sources = dir.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "cu")).count();
        assert_eq!(MODULES.len(), sources, "one module per kernels/*.cu");
    }

    #[test]
    fn kernel_names_follow_the_convention() {
        for k in ALL {
            assert!(is_kernel_name(k.name), "{}", k.name);
        }
        let mut names: Vec<_> = ALL.iter().map(|k| k.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "duplicate kernel names");
    }
}
