//! Per-layer progress for import, pull and push: a bar per big layer (bytes, speed) on a
//! terminal, one plain line per layer event otherwise, nothing with `--quiet`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::store::Digest;

pub(crate) struct LayerBars {
    bars: Option<MultiProgress>,
    active: Mutex<HashMap<Digest, ProgressBar>>,
    quiet: bool,
}

impl LayerBars {
    pub(crate) fn new(quiet: bool) -> LayerBars {
        let bars = (!quiet && std::io::stderr().is_terminal()).then(MultiProgress::new);
        LayerBars {
            bars,
            active: Mutex::new(HashMap::new()),
            quiet,
        }
    }

    /// A line on stdout (above the bars when there are some).
    pub(crate) fn line(&self, s: String) {
        if self.quiet {
            return;
        }
        match &self.bars {
            Some(m) => {
                let _ = m.println(s);
            }
            None => {
                let mut o = std::io::stdout().lock();
                let _ = writeln!(o, "{s}").and_then(|_| o.flush());
            }
        }
    }

    /// Start a bar for `d` (on a terminal only), labelled `verb`.
    pub(crate) fn start(&self, d: &Digest, size: u64, verb: &str) {
        let Some(m) = &self.bars else { return };
        let b = m.add(ProgressBar::new(size));
        b.set_style(
            ProgressStyle::with_template(
                "{prefix}: {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_prefix(d.short());
        b.set_message(verb.to_string());
        b.enable_steady_tick(Duration::from_millis(200));
        self.bars_of().insert(*d, b);
    }

    pub(crate) fn progress(&self, d: &Digest, done: u64) {
        if let Some(b) = self.bars_of().get(d) {
            b.set_position(done);
        }
    }

    /// Clear the bar of `d`, if any, and print `line`.
    pub(crate) fn finish(&self, d: &Digest, line: String) {
        if let Some(b) = self.bars_of().remove(d) {
            b.finish_and_clear();
        }
        self.line(line);
    }

    fn bars_of(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, ProgressBar>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }
}
