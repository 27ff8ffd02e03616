//! Our CRF against pydensecrf's outputs on the same inputs (tests/data/crf, made by
//! make_golden.py there with pydensecrf's usual call and the defaults of `coseg crf`).
//!
//! We follow densecrf's lattice step for step (same embedding, rounding, blur, alpha,
//! normalisation, Potts sign, unary clipping), so the lesion marginals should agree to float
//! rounding: measured max |dq| 1.2e-6 (rgb), 7.2e-6 (grey), 5.7e-7 (ct); bound 1e-4. The masks
//! agree exactly except where pydensecrf's marginal is within that distance of 0.5.

use coseg::crf::{self, CrfParams};
use coseg::io::{self, Image};
use std::path::{Path, PathBuf};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/crf")
}

fn load_case(name: &str) -> (Image<u8>, Image<u8>, Vec<f32>) {
    let dir = data_dir();
    let image = io::read_u8(dir.join(format!("{name}_image.png"))).unwrap();
    let prob = io::read_u8(dir.join(format!("{name}_prob.png"))).unwrap();
    let bytes = std::fs::read(dir.join(format!("{name}_q1.f32"))).unwrap();
    let q1 = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect::<Vec<_>>();
    assert_eq!(q1.len(), prob.width * prob.height, "{name}: golden size");
    (image, prob, q1)
}

fn check_case(name: &str, want_channels: usize) {
    let (image, prob8, golden) = load_case(name);
    assert_eq!(image.channels, want_channels);
    let prob = Image::new(
        prob8.width,
        prob8.height,
        1,
        prob8.data.iter().map(|&v| v as f32 / 255.0).collect(),
    );
    let q = crf::refine(&image, &prob, &CrfParams::default()).unwrap();
    let max_diff = q
        .data
        .iter()
        .zip(&golden)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let mask = crf::mask_from_marginal(&q);
    let mut disagree = 0;
    for (i, (&m, &g)) in mask.data.iter().zip(&golden).enumerate() {
        if (m == 255) != (g > 0.5) {
            disagree += 1;
            assert!(
                (g - 0.5).abs() < 1e-4,
                "{name}: pixel {i} flips although pydensecrf's marginal is {g}"
            );
        }
    }
    let lesion = mask.data.iter().filter(|&&v| v == 255).count();
    let before = prob8.data.iter().filter(|&&v| v > 127).count();
    eprintln!(
        "{name}: max |q - pydensecrf| = {max_diff:.2e}, mask disagreements {disagree}, lesion {before} -> {lesion}"
    );
    assert!(max_diff < 1e-4, "{name}: max |q - pydensecrf| = {max_diff}");
    // The case is not trivial: the CRF changed the mask and kept a lesion.
    assert!(
        lesion > 0 && lesion != before,
        "{name}: {before} -> {lesion}"
    );
}

#[test]
fn rgb_image_matches_pydensecrf() {
    check_case("rgb", 3);
}

#[test]
fn grey_image_matches_pydensecrf_given_replicated_rgb() {
    check_case("grey", 1);
}

#[test]
fn ct_crop_matches_pydensecrf() {
    check_case("ct", 1);
}

/// Runs `coseg crf` with `flags` on the image and probability map `image` and `prob` of
/// tests/data/crf, writing `out`.
fn run_crf(flags: &[&str], image: &str, prob: &str, out: &Path) -> std::process::Output {
    let dir = data_dir();
    std::process::Command::new(env!("CARGO_BIN_EXE_coseg"))
        .arg("crf")
        .args(flags)
        .arg("--image")
        .arg(dir.join(image))
        .arg("--prob")
        .arg(dir.join(prob))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn cli_writes_pydensecrf_mask() {
    let out = std::env::temp_dir().join(format!("coseg-crf-cli-{}/mask.png", std::process::id()));
    let run = run_crf(&[], "ct_image.png", "ct_prob.png", &out);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mask = io::read_u8(&out).unwrap();
    let (_, _, golden) = load_case("ct");
    let disagree = mask
        .data
        .iter()
        .zip(&golden)
        .filter(|&(&m, &g)| (m == 255) != (g > 0.5))
        .count();
    assert!(mask.data.iter().all(|&v| v == 0 || v == 255));
    assert_eq!(disagree, 0);
    // Bad input: a width of zero and mismatched sizes are errors that say what is wrong.
    let run = run_crf(&["--bilateral-srgb", "0"], "ct_image.png", "ct_prob.png", &out);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("srgb"), "{err}");
    let run = run_crf(&[], "rgb_image.png", "ct_prob.png", &out);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && err.contains("48x40") && err.contains("128x128"),
        "{err}"
    );
    // --device: the CPU always; CUDA where there is one (the same mask), a clear error where not.
    let mut masks = Vec::new();
    for device in ["cpu", "cuda"] {
        let run = run_crf(&["--device", device], "ct_image.png", "ct_prob.png", &out);
        let err = String::from_utf8_lossy(&run.stderr);
        if device == "cuda" && coseg::backend::cuda::CudaDevice::get(0).is_err() {
            assert!(!run.status.success() && err.contains("cuda"), "{err}");
            continue;
        }
        assert!(run.status.success(), "--device {device}: {err}");
        assert!(String::from_utf8_lossy(&run.stdout).contains(if device == "cpu" { "(cpu)" } else { "(cuda:0)" }));
        masks.push(io::read_u8(&out).unwrap().data);
    }
    assert!(masks.windows(2).all(|m| m[0] == m[1]), "CPU and GPU masks differ");
    std::fs::remove_dir_all(out.parent().unwrap()).ok();
}
