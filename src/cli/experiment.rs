//! `coseg experiment run FILES... [--out DIR]`: trains and evaluates each experiment config and
//! prints the paper's tables (Rec., Prec., Dice, AVD, VS as mean ± std); also writes
//! DIR/results.md and DIR/results.csv.

use coseg::train::experiment::{run_experiments, table_text, write_tables};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Train (or resume) and evaluate each config, then print the tables.
    Run {
        /// Experiment configs (TOML), e.g. experiments/t1_*.toml.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where results.md and results.csv go.
        #[arg(long, default_value = "runs/experiments")]
        out: PathBuf,
    },
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.action {
        Action::Run { files, out } => {
            // Checked before hours of training, not after.
            let mut outputs = coseg::output::Outputs::new("experiment run", None);
            for f in &files {
                outputs.input(f, "experiment config");
            }
            outputs.claim(&out.join("results.md"))?;
            outputs.claim(&out.join("results.csv"))?;
            let rows = run_experiments(&files)?;
            print!("{}", table_text(&rows));
            write_tables(&out, &rows)?;
            println!("written {} and {}", out.join("results.md").display(), out.join("results.csv").display());
            Ok(())
        }
    }
}
