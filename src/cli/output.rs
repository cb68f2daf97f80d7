//! Drawing progress and printing data: the only place that talks to the terminal.

use std::time::Duration;

use dockerbuild::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Draws library progress as an indicatif bar on stderr (hidden with `-q` or no TTY).
pub struct Bar {
    pub(crate) bar: ProgressBar,
}

impl Bar {
    pub fn new(quiet: bool) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        Bar { bar }
    }
}

impl Progress for Bar {
    fn start(&self, what: &str, total_bytes: Option<u64>) {
        self.bar.reset();
        if let Some(total) = total_bytes {
            self.bar.set_length(total);
        }
        self.bar.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        self.bar.set_message(what.to_owned());
        self.bar.enable_steady_tick(Duration::from_millis(200));
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Human-readable byte counts (1024-based).
pub fn bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

/// Prints a value as pretty JSON on stdout.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Silences [`status`] lines (`-q`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// A line for people on stderr (not data), suppressed by `-q`.
pub fn status(msg: impl std::fmt::Display) {
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{msg}");
    }
}

/// One bar per concurrent download, stacked (hidden with `-q`).
pub struct Bars {
    multi: indicatif::MultiProgress,
    quiet: bool,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Bars {
            multi: indicatif::MultiProgress::new(),
            quiet,
        }
    }

    /// A spinner line labelled `name`, for a job whose size is unknown (hidden with `-q`).
    pub fn line(&self, name: &str) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let line = self.multi.add(ProgressBar::new_spinner());
        line.set_style(
            ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}").expect("valid"),
        );
        line.set_prefix(name.to_owned());
        line.enable_steady_tick(Duration::from_millis(200));
        line
    }

    /// A new bar labelled `name`.
    pub fn bar(&self, name: &str) -> Box<dyn Progress> {
        let b = Bar::new(self.quiet);
        if !self.quiet {
            let bar = self.multi.add(b.bar.clone());
            bar.set_prefix(name.to_owned());
        }
        Box::new(Labelled {
            inner: b,
            label: name.to_owned(),
        })
    }
}

/// A bar whose message is a fixed label rather than the library's phase name (a URL).
struct Labelled {
    inner: Bar,
    label: String,
}

impl Progress for Labelled {
    fn start(&self, _what: &str, total_bytes: Option<u64>) {
        self.inner.start(&self.label, total_bytes);
    }
    fn advance(&self, bytes: u64) {
        self.inner.advance(bytes);
    }
    fn finish(&self) {
        self.inner.finish();
    }
}
