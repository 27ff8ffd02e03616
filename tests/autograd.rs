//! Autograd behaviour: recording, inference mode, accumulation, detach, errors; on every device
//! present (`test_device!`). The gradients compared exactly are sums and products of small
//! integers and of values times one, exact in f32 on any device.

mod common;

use coseg::autograd::{NoGradGuard, no_grad};
use coseg::tensor::Tensor;
use common::test_device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

test_device!(no_grad_records_nothing_and_restores, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let w = Tensor::randn([3, 3], 0.0, 1.0, device, &mut rng).unwrap().into_var();
    let y = no_grad(|| w.sqr().unwrap().sum_all().unwrap());
    assert!(!y.tracks_grad());
    assert!(y.backward().unwrap_err().to_string().contains("no variable"));
    {
        let _g = NoGradGuard::new();
        assert!(!w.relu().unwrap().tracks_grad());
    }
    assert!(w.relu().unwrap().tracks_grad(), "recording is back on after the guard");
});

test_device!(gradients_accumulate_until_zeroed, |device| {
    let w = Tensor::from_vec(vec![1.0, -2.0, 3.0], [3], device).unwrap().into_var();
    // d/dw sum(w^2) = 2w; the tensor used twice in one graph also sums: d/dw sum(w*w + w) = 2w + 1
    w.mul(&w).unwrap().add(&w).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(w.grad().unwrap().to_vec().unwrap(), vec![3.0, -3.0, 7.0]);
    w.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(w.grad().unwrap().to_vec().unwrap(), vec![5.0, -7.0, 13.0]);
    w.zero_grad();
    assert!(w.grad().is_none());
});

test_device!(detach_stops_gradient_and_backward_needs_a_scalar, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let a = Tensor::randn([4], 0.0, 1.0, device, &mut rng).unwrap().into_var();
    let b = Tensor::randn([4], 0.0, 1.0, device, &mut rng).unwrap().into_var();
    let loss = a.mul(&b.detach()).unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    assert_eq!(a.grad().unwrap().to_vec().unwrap(), b.to_vec().unwrap());
    assert!(b.grad().is_none());
    let e = a.mul(&b).unwrap().backward().unwrap_err().to_string();
    assert!(e.contains("scalar") && e.contains("[4]"), "{e}");
});

test_device!(deep_chain_backward, |device| {
    // A long chain (like a 100-layer network's graph) must not overflow the stack.
    let x = Tensor::from_vec(vec![0.5; 8], [8], device).unwrap().into_var();
    let mut y = x.clone();
    for _ in 0..5000 {
        y = y.mul_scalar(1.0).unwrap().add_scalar(0.0).unwrap();
    }
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec().unwrap(), vec![1.0; 8]);
});

test_device!(kept_gradient_buffers_take_the_next_gradient_in_place, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let w = Tensor::randn([5, 4], 0.0, 1.0, device, &mut rng).unwrap().into_var();
    let fresh = Tensor::randn([5, 4], 0.0, 1.0, device, &mut rng).unwrap().into_var();
    fresh.assign(&w.detach()).unwrap();
    let mut first = None;
    for step in 0..3 {
        let g = Tensor::randn([5, 4], 0.0, 1.0, device, &mut rng).unwrap();
        w.zero_grad_keeping_buffer();
        fresh.zero_grad();
        assert!(w.grad().is_none(), "step {step}: a kept buffer is no gradient");
        w.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
        fresh.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
        let (kept, want) = (w.grad().unwrap(), fresh.grad().unwrap());
        assert_eq!(kept.to_vec().unwrap(), want.to_vec().unwrap(), "step {step}");
        assert_eq!(kept.to_vec().unwrap(), g.to_vec().unwrap(), "step {step}");
        // The same memory from the first step on: the kept buffer took the gradient.
        let at = address(&kept);
        assert_eq!(*first.get_or_insert(at), at, "step {step}: a new buffer");
    }
});

/// Where a tensor's values live (host or device address).
fn address(t: &Tensor) -> u64 {
    match &*t.storage() {
        coseg::tensor::Storage::Cpu(v) => v.as_ptr() as u64,
        coseg::tensor::Storage::Cuda(b) => b.device_address(),
    }
}
