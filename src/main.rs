use clap::Parser;

fn main() {
    let cli = coseg_cli::Cli::parse();
    if let Err(e) = coseg_cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[path = "cli/mod.rs"]
mod coseg_cli;
