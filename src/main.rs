use clap::Parser;

fn main() {
    let cli = coseg_cli::Cli::parse();
    if let Err(e) = coseg_cli::run(cli) {
        // The chain, less the causes a message already quotes (coseg's I/O errors print their source).
        let mut msg = e.to_string();
        for cause in e.chain().skip(1).map(|c| c.to_string()) {
            if !msg.contains(&cause) {
                msg = format!("{msg}: {cause}");
            }
        }
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}

#[path = "cli/mod.rs"]
mod coseg_cli;
