//! One look for every long-running loop: a bar with position, rate and ETA on stderr.
//! Hidden when stderr is not a terminal or `COSEG_NO_PROGRESS` is set (tests, CI logs).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if std::env::var_os("COSEG_NO_PROGRESS").is_some() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>14} [{bar:40}] {pos}/{len} ({per_sec}, ETA {eta})",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
