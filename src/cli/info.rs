#[derive(clap::Args)]
pub struct Args {}

pub fn run(_: Args) -> anyhow::Result<()> {
    println!("coseg {}", env!("CARGO_PKG_VERSION"));
    println!("cpu threads: {}", rayon::current_num_threads());
    use coseg::backend::cuda::{CudaDevice, kernels};
    println!("kernels: {} modules, {:?} for {}", kernels::MODULES.len(), kernels::KERNEL_FORMAT, kernels::KERNEL_ARCH);
    match CudaDevice::get(0) {
        Ok(d) => println!("cuda:0: {} (sm_{}{}, {} SMs)", d.name(), d.compute_capability().0, d.compute_capability().1, d.sm_count()),
        Err(e) => println!("cuda: none ({e}); --device auto uses the cpu"),
    }
    Ok(())
}
