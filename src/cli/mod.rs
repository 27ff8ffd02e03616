//! The `coseg` command line: one file per subcommand, each with its clap arguments and a `run`.

use clap::{Parser, Subcommand};

mod crf;
mod info;

#[derive(Parser)]
#[command(name = "coseg", version, about = "Weakly supervised lesion co-segmentation on CT from RECIST marks")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// What this build can do: version, devices, kernels.
    Info(info::Args),
    /// Refine a lesion probability map with the dense CRF (pydensecrf's parameters and defaults).
    Crf(crf::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Crf(a) => crf::run(a),
    }
}
