//! The CUDA runtime: device selection, copies, the caching allocator and error reporting.
//! GPU parts skip without a GPU (and fail with REQUIRE_CUDA=1).

mod common;
use common::test_gpu;
mod gpu_common;
use coseg::backend::cuda::{CudaDevice, CudaError, device_count, elementwise, nd, reduce};
use coseg::device::{Device, DeviceRequest, resolve};
use coseg::Error;
use gpu_common::*;

#[test]
fn gpu_device_resolution_matches_what_the_machine_has() {
    assert_eq!(resolve(DeviceRequest::Cpu).unwrap(), Device::Cpu);
    let have_gpu = CudaDevice::get(0).is_ok();
    let auto = resolve(DeviceRequest::Auto).unwrap();
    assert_eq!(auto, if have_gpu { Device::Cuda(0) } else { Device::Cpu });
    // An ordinal no machine has: an error naming the request and why, never a panic.
    match resolve(DeviceRequest::Cuda(4096)) {
        Err(e @ Error::DeviceRequest { request: DeviceRequest::Cuda(4096), .. }) => {
            assert!(e.to_string().contains("cuda:4096"), "{e}");
            let Error::DeviceRequest { source, .. } = e else { unreachable!() };
            assert!(
                matches!(source, CudaError::NoDriver | CudaError::NoSuchDevice { ordinal: 4096, .. }),
                "{source:?}"
            );
        }
        other => panic!("cuda:4096 resolved to {other:?}"),
    }
    if !have_gpu {
        let e = resolve(DeviceRequest::Cuda(0)).unwrap_err().to_string();
        assert!(e.starts_with("device: --device cuda:0:"), "{e}");
        if std::env::var("REQUIRE_CUDA").is_ok_and(|v| v == "1") {
            panic!("REQUIRE_CUDA=1 but no GPU: {e}");
        }
    } else {
        assert!(device_count().unwrap() >= 1);
    }
}

#[test]
fn gpu_copies_round_trip_and_the_allocator_reuses_blocks() {
    let _serial = gpu_common::serial();
    let Some(dev) = gpu("gpu_copies_round_trip_and_the_allocator_reuses_blocks") else { return };
    let mut r = rng(1);
    let host = randn(&mut r, 10_007);
    let buf = dev.htod(&host).unwrap();
    assert_eq!(dev.dtoh(&buf).unwrap(), host);
    let copy = dev.dtod(&buf).unwrap();
    assert_eq!(dev.dtoh(&copy).unwrap(), host);
    drop((buf, copy));
    // Warm: the same sizes again come from the free lists, not the driver.
    let before = dev.memory_stats();
    for _ in 0..5 {
        let a = dev.htod(&host).unwrap();
        let b = dev.dtod(&a).unwrap();
        assert_eq!(dev.dtoh(&b).unwrap()[17], host[17]);
    }
    let after = dev.memory_stats();
    assert_eq!(after.device_allocations, before.device_allocations, "{before:?} -> {after:?}");
    assert!(after.reuses >= before.reuses + 10);
    assert!(after.peak_in_use_bytes >= 2 * 10_007 * 4);
    // The peaks start again from what is held now: one buffer, then a second one on top.
    let held = dev.htod(&host).unwrap();
    dev.reset_peak_memory();
    let reset = dev.memory_stats();
    assert_eq!(reset.peak_in_use_bytes, reset.in_use_bytes, "{reset:?}");
    assert!(reset.in_use_bytes < after.peak_in_use_bytes, "{reset:?} after {after:?}");
    let more = dev.dtod(&held).unwrap();
    let now = dev.memory_stats();
    assert!(now.in_use_bytes > reset.in_use_bytes && now.peak_in_use_bytes == now.in_use_bytes, "{reset:?} -> {now:?}");
    drop((held, more));
}

test_gpu!(gpu_bad_launch_arguments_are_refused_with_the_op_and_shapes, |dev| {
    let a = dev.htod(&[1.0; 24]).unwrap();
    let b = dev.htod(&[1.0; 6]).unwrap();
    let mut y = dev.alloc(24).unwrap();
    let walk = nd::geometry("test", &[24], &[1], &[1], 0, 0).unwrap();
    let e = nd::binary(&dev, elementwise::BinaryOp::Add, &a, &b, &mut y, &walk).unwrap_err();
    assert!(e.to_string().contains("binary_nd_fwd_f32") && e.to_string().contains("b has 6 elements"), "{e}");
    let mut small = dev.alloc(5).unwrap();
    let e = reduce::sum_axes(&dev, &a, [1, 2, 3, 4], [true, true, false, false], &mut small, 1.0).unwrap_err();
    assert!(e.to_string().contains("y has 5 elements"), "{e}");
});

#[test]
fn gpu_out_of_memory_names_the_size_and_what_is_free() {
    let _serial = gpu_common::serial();
    let Some(dev) = gpu("gpu_out_of_memory_names_the_size_and_what_is_free") else { return };
    let (_, total) = dev.mem_info().unwrap();
    let e = dev.alloc(total).unwrap_err().to_string(); // 4x the card: cannot fit
    assert!(e.contains("out of memory") && e.contains("free") && e.contains(&format!("{} bytes", 4 * coseg::backend::cuda::alloc::size_class(total))), "{e}");
}

#[test]
fn gpu_tensors_move_between_devices_and_back() {
    use coseg::tensor::Tensor;
    let mut r = rng(3);
    let data = randn(&mut r, 2 * 3 * 4 * 5);
    let cpu = Tensor::from_vec(data.clone(), vec![2, 3, 4, 5], Device::Cpu).unwrap();
    let Some(_dev) = gpu("gpu_tensors_move_between_devices_and_back") else {
        // No GPU: asking for one is a typed CUDA error, never a panic.
        match cpu.to_device(Device::Cuda(0)) {
            Err(Error::Cuda(CudaError::NoDriver | CudaError::NoSuchDevice { ordinal: 0, count: 0 } | CudaError::Driver { .. })) => {}
            other => panic!("to_device(cuda:0) without a GPU gave {other:?}"),
        }
        return;
    };
    let on_gpu = cpu.to_device(Device::Cuda(0)).unwrap();
    assert_eq!(on_gpu.device(), Device::Cuda(0));
    assert_eq!(on_gpu.to_vec().unwrap(), data);
    assert_eq!(on_gpu.to_device(Device::Cpu).unwrap().to_vec().unwrap(), data);
}

test_gpu!(gpu_profiling_times_each_launch_by_name_and_records_nothing_when_off, |dev| {
    use coseg::backend::cuda::{GpuBuffer, StepProfiler, blas, elementwise::BinaryOp};
    // Profiling is device-wide: no other test of this binary may launch meanwhile.
    let _serial = gpu_common::serial();
    let mut r = rng(5);
    let n = 512;
    let a = dev.htod(&randn(&mut r, n * n)).unwrap();
    let b = dev.htod(&randn(&mut r, n * n)).unwrap();
    let (mut c, mut y) = (dev.alloc(n * n).unwrap(), dev.alloc(n * n).unwrap());
    let walk = nd::geometry("test", &[n * n], &[1], &[1], 0, 0).unwrap();
    // One "step": a product and two adds (different counts, so a mixed-up key shows).
    let step = |c: &mut GpuBuffer, y: &mut GpuBuffer| {
        blas::sgemm(&dev, 1, (false, &a, 0), (false, &b, 0), n, n, n, c).unwrap();
        nd::binary(&dev, BinaryOp::Add, &a, &b, y, &walk).unwrap();
        nd::binary(&dev, BinaryOp::Add, c, &b, y, &walk).unwrap();
    };
    step(&mut c, &mut y); // loads the module and creates the cuBLAS handle, untimed
    let mut prof = StepProfiler::new(dev.clone()).unwrap();
    let steps = 4;
    let mut held = 0;
    for s in 0..steps {
        prof.begin().unwrap();
        assert!(dev.profiling());
        step(&mut c, &mut y);
        prof.end().unwrap();
        if s == 0 {
            held = dev.profile_events_held();
            assert!(held >= 6, "3 launches need 6 events, the pool holds {held}");
        }
    }
    // Events are reused: no step after the first created any.
    assert_eq!(dev.profile_events_held(), held);
    let p = prof.finish().unwrap();
    assert!(!dev.profiling());
    assert_eq!(p.steps, steps);
    let launches: std::collections::BTreeMap<&str, u64> = p.rows.iter().map(|r| (r.name.as_str(), r.launches)).collect();
    assert_eq!(launches, [("binary_nd_fwd_f32", 2 * steps as u64), ("cublas sgemm", steps as u64)].into(), "{}", p.table());
    assert!(p.rows.iter().all(|r| r.total_ms > 0.0 && r.total_ms.is_finite()), "{}", p.table());
    assert!(p.rows.windows(2).all(|w| w[0].total_ms >= w[1].total_ms));
    // The kernels ran inside the measured steps: their time fits in the wall time.
    let (kernels, wall, gap) = p.per_step();
    assert!(kernels > 0.0 && gap.unwrap() >= 0.0, "kernels {kernels} ms, wall {wall:?} ms per step");
    // The adds did run: y = c + b.
    let (cv, bv, yv) = (dev.dtoh(&c).unwrap(), dev.dtoh(&b).unwrap(), dev.dtoh(&y).unwrap());
    assert!(yv.iter().zip(cv.iter().zip(&bv)).all(|(y, (c, b))| (y - (c + b)).abs() <= 1e-5 * (1.0 + y.abs())));
    // Off: launches are not timed.
    step(&mut c, &mut y);
    let off = dev.collect_profile(1).unwrap();
    assert!(off.rows.is_empty(), "{}", off.table());
    // On by hand: timed, collected once, then the totals start again.
    dev.set_profiling(true);
    step(&mut c, &mut y);
    dev.set_profiling(false);
    step(&mut c, &mut y);
    let once = dev.collect_profile(1).unwrap();
    assert_eq!(once.rows.iter().map(|r| r.launches).sum::<u64>(), 3, "{}", once.table());
    assert!(dev.collect_profile(1).unwrap().rows.is_empty());
});

test_gpu!(gpu_training_profile_skips_the_warm_up_steps_and_writes_its_csv, |dev| {
    use coseg::backend::cuda::{elementwise::BinaryOp, profile::parse_csv};
    use coseg::train::profile::{TrainProfiler, WARMUP_STEPS};
    let _serial = gpu_common::serial();
    let mut r = rng(6);
    let n = 4096;
    let (a, b) = (dev.htod(&randn(&mut r, n)).unwrap(), dev.htod(&randn(&mut r, n)).unwrap());
    let mut y = dev.alloc(n).unwrap();
    let walk = nd::geometry("test", &[n], &[1], &[1], 0, 0).unwrap();
    let out = std::env::temp_dir().join(format!("coseg-gpu-profile-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let mut prof = TrainProfiler::new(true, Device::Cuda(dev.ordinal())).unwrap();
    // Step i launches i + 1 adds: which steps were counted shows in the launches per step.
    let steps = WARMUP_STEPS + 3;
    for i in 0..steps {
        prof.begin().unwrap();
        for _ in 0..=i {
            nd::binary(&dev, BinaryOp::Add, &a, &b, &mut y, &walk).unwrap();
        }
        prof.end().unwrap();
    }
    let p = prof.finish(&out).unwrap().expect("steps after the warm-up were profiled");
    assert_eq!(p.steps, 3);
    let counted: u64 = (WARMUP_STEPS..steps).map(|i| i as u64 + 1).sum();
    assert_eq!(p.rows.len(), 1, "{}", p.table());
    assert_eq!((p.rows[0].name.as_str(), p.rows[0].launches), ("binary_nd_fwd_f32", counted));
    let csv = parse_csv(&std::fs::read_to_string(out.join("profile.csv")).unwrap(), "profile.csv").unwrap();
    assert_eq!(csv, p.csv_rows());
    assert!((csv[0].launches_per_step - counted as f64 / 3.0).abs() < 1e-12 && csv[0].share == 1.0);
    // By model part: the adds ran outside every part.
    let parts = parse_csv(&std::fs::read_to_string(out.join("profile-parts.csv")).unwrap(), "profile-parts.csv").unwrap();
    assert_eq!(parts, p.part_csv_rows());
    assert_eq!(parts.len(), 1, "{}", p.table());
    assert_eq!(parts[0].name, "(outside the model parts)");
    assert!((parts[0].launches_per_step - counted as f64 / 3.0).abs() < 1e-12 && parts[0].share == 1.0);
    std::fs::remove_dir_all(&out).ok();
});
