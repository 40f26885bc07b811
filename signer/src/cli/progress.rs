//! Progress on the terminal for the CLI's long waits (ceremonies, aux info and its
//! prime generation, transactions): a spinner with the elapsed time and the state
//! last seen, on standard error and only when it is a terminal, so scripts and logs
//! reading standard output see exactly what they saw before.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A spinner shown while waiting; cleared when dropped.
#[derive(Debug)]
pub struct Waiting {
    bar: ProgressBar,
}

impl Waiting {
    /// Starts a spinner for `what` (e.g. "ceremony 1f2e…"), drawn on standard error
    /// when it is a terminal (hidden otherwise).
    pub fn new(what: &str) -> Waiting {
        Waiting::with_target(what, ProgressDrawTarget::stderr())
    }

    fn with_target(what: &str, target: ProgressDrawTarget) -> Waiting {
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix}: {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Waiting { bar }
    }

    /// The state last seen (shown beside the elapsed time).
    pub fn state(&self, state: &str) {
        self.bar.set_message(state.to_owned());
    }

    /// Whether the spinner is drawn (standard error is a terminal).
    pub fn is_drawn(&self) -> bool {
        !self.bar.is_hidden()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spinner_shows_what_is_awaited_and_the_last_state() {
        let w = Waiting::with_target("ceremony c1", ProgressDrawTarget::hidden());
        w.state("running, 2 of 5 confirmed");
        assert_eq!(w.bar.prefix(), "ceremony c1");
        assert_eq!(w.bar.message(), "running, 2 of 5 confirmed");
        assert!(!w.is_drawn(), "hidden target: nothing drawn");
    }
}
