//! Progress bars for long offline steps. Bars draw only on a terminal
//! (indicatif hides them otherwise), so logs and tests stay clean; every
//! step also reports its wall time for the end-of-run summary.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Collects step timings and hands out bars.
pub struct Progress {
    enabled: bool,
    steps: Mutex<Vec<(String, Duration)>>,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            steps: Mutex::new(Vec::new()),
        }
    }

    /// A silent progress (tests, library callers).
    pub fn hidden() -> Self {
        Progress::new(false)
    }

    /// Starts a step of `len` units; finish it with `Step::done`.
    pub fn step(&self, name: &str, len: u64) -> Step<'_> {
        let bar = if self.enabled {
            let b = ProgressBar::new(len);
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix:>14} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(name.to_string());
            b
        } else {
            ProgressBar::hidden()
        };
        Step {
            owner: self,
            name: name.to_string(),
            bar,
            start: Instant::now(),
        }
    }

    /// (step, seconds) in the order steps finished.
    pub fn summary(&self) -> Vec<(String, f64)> {
        self.steps
            .lock()
            .map(|s| {
                s.iter()
                    .map(|(n, d)| (n.clone(), d.as_secs_f64()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub struct Step<'a> {
    owner: &'a Progress,
    name: String,
    bar: ProgressBar,
    start: Instant,
}

impl Step<'_> {
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn set_message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    /// Ends the step and records its duration; returns seconds.
    pub fn done(self) -> f64 {
        let d = self.start.elapsed();
        self.bar.finish_and_clear();
        if let Ok(mut s) = self.owner.steps.lock() {
            s.push((self.name.clone(), d));
        }
        d.as_secs_f64()
    }
}
