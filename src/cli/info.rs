#[derive(clap::Args)]
pub struct Args {}

pub fn run(_: Args) -> anyhow::Result<()> {
    println!("coseg {}", env!("CARGO_PKG_VERSION"));
    println!("cpu threads: {}", rayon::current_num_threads());
    Ok(())
}
