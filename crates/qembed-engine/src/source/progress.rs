//! What a user sees while a hub file downloads: indicatif bars on a terminal, a log
//! line every few seconds otherwise (a service's journal has no use for redrawn bars).
//! Also remembers the size the hub announced, so the caller can check the file.

use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget};

/// How download progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Redrawn progress bars on stderr (for a terminal).
    Bars,
    /// `tracing` info lines every [`LOG_EVERY`] and when a file completes.
    Log,
    /// Nothing.
    Quiet,
}

/// How often a log line is written while a file downloads.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Files at least this large get a "downloading" line when they start.
const ANNOUNCE_FROM: u64 = 1 << 20;

/// One file's download state. hf-hub 0.4.3 calls `init(size)` before each attempt
/// and, for each attempt, `update(offset)` with the bytes already in the partial file
/// (0 for a fresh one) before any bytes read; that first update is a resume offset,
/// not progress, which is why it is tracked separately (for the rate).
pub(crate) struct Reporter {
    mode: ProgressMode,
    file: String,
    announced: Option<u64>,
    offset: u64,
    done: u64,
    expect_offset: bool,
    attempt_start: Instant,
    last_log: Instant,
    bar: Option<ProgressBar>,
}

impl Reporter {
    pub(crate) fn new(mode: ProgressMode, file: &str) -> Self {
        let now = Instant::now();
        Self {
            mode,
            file: file.to_string(),
            announced: None,
            offset: 0,
            done: 0,
            expect_offset: false,
            attempt_start: now,
            last_log: now,
            bar: None,
        }
    }

    /// The size the hub announced for the file (set once a download has started).
    pub(crate) fn announced(&self) -> Option<u64> {
        self.announced
    }

    /// Bytes in the partial file so far (resumed plus received).
    pub(crate) fn done(&self) -> u64 {
        self.done
    }

    fn init_at(&mut self, size: u64, now: Instant) {
        self.announced = Some(size);
        self.done = 0;
        self.offset = 0;
        self.expect_offset = true;
        self.attempt_start = now;
        self.last_log = now;
        if self.mode == ProgressMode::Bars {
            // Styled (by hf-hub's init) before it is first drawn.
            let mut bar = self.bar.take().unwrap_or_else(ProgressBar::hidden);
            hf_hub::api::Progress::init(&mut bar, size as usize, &self.file);
            bar.set_position(0);
            if bar.is_hidden() {
                bar.set_draw_target(ProgressDrawTarget::stderr());
            }
            self.bar = Some(bar);
        }
    }

    /// Returns the line to log, if one is due.
    fn update_at(&mut self, bytes: u64, now: Instant) -> Option<String> {
        self.done += bytes;
        if self.expect_offset {
            self.expect_offset = false;
            self.offset = bytes;
            if let Some(bar) = &self.bar {
                bar.set_position(self.done);
            }
            if bytes > 0 {
                return Some(format!(
                    "{}: resuming at {} of {}",
                    self.file,
                    HumanBytes(bytes),
                    self.total()
                ));
            }
            // Small files finish at once; their completion line is enough.
            return (self.announced >= Some(ANNOUNCE_FROM))
                .then(|| format!("{}: downloading {}", self.file, self.total()));
        }
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
        }
        if now.duration_since(self.last_log) < LOG_EVERY {
            return None;
        }
        self.last_log = now;
        Some(format!(
            "{}: {} / {} ({}/s)",
            self.file,
            HumanBytes(self.done),
            self.total(),
            HumanBytes(self.rate(now))
        ))
    }

    fn finish_at(&mut self, now: Instant) -> String {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
        let secs = now.duration_since(self.attempt_start).as_secs_f64();
        let resumed = if self.offset > 0 {
            format!(" ({} resumed)", HumanBytes(self.offset))
        } else {
            String::new()
        };
        format!(
            "{}: done, {}{resumed} in {secs:.1} s ({}/s)",
            self.file,
            HumanBytes(self.done),
            HumanBytes(self.rate(now))
        )
    }

    fn total(&self) -> String {
        self.announced
            .map_or_else(|| "?".to_string(), |t| HumanBytes(t).to_string())
    }

    /// Bytes per second received in this attempt (resumed bytes do not count).
    fn rate(&self, now: Instant) -> u64 {
        let secs = now.duration_since(self.attempt_start).as_secs_f64();
        if secs <= 0.0 {
            return 0;
        }
        (self.done.saturating_sub(self.offset) as f64 / secs) as u64
    }

    fn log(&self, line: Option<String>) {
        if self.mode == ProgressMode::Log {
            if let Some(line) = line {
                tracing::info!(target: "qembed::hub", "{line}");
            }
        }
    }
}

/// The handle hf-hub drives (it takes its progress by value).
pub(crate) struct Tracker<'a>(pub(crate) &'a mut Reporter);

impl hf_hub::api::Progress for Tracker<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        self.0.init_at(size as u64, Instant::now());
    }

    fn update(&mut self, size: usize) {
        let line = self.0.update_at(size as u64, Instant::now());
        self.0.log(line);
    }

    fn finish(&mut self) {
        let line = self.0.finish_at(Instant::now());
        self.0.log(Some(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_every_five_seconds_and_at_the_end_with_a_rate_excluding_resumed_bytes() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Reporter::new(ProgressMode::Log, "model.safetensors");
        r.init_at(10_000_000, t0);
        // The resume offset comes first and is announced as such.
        let resumed = r.update_at(4_000_000, t0).unwrap();
        assert!(
            resumed.contains("resuming at 3.81 MiB of 9.54 MiB"),
            "{resumed}"
        );
        assert_eq!(r.update_at(1_000_000, at(1)), None);
        assert_eq!(r.update_at(1_000_000, at(4)), None);
        let line = r.update_at(1_000_000, at(5)).unwrap();
        // 3 MB received in 5 s: 600 kB/s; the 4 MB resumed do not inflate it.
        assert_eq!(
            line,
            "model.safetensors: 6.68 MiB / 9.54 MiB (585.94 KiB/s)"
        );
        assert_eq!(r.update_at(1_000_000, at(9)), None);
        assert!(r.update_at(1_000_000, at(10)).is_some());
        let end = r.finish_at(at(10));
        assert_eq!(
            end,
            "model.safetensors: done, 8.58 MiB (3.81 MiB resumed) in 10.0 s (488.28 KiB/s)"
        );
        assert_eq!(r.announced(), Some(10_000_000));
        assert_eq!(r.done(), 9_000_000);
        // A fresh start of a large file says so; its done line has no "resumed".
        r.init_at(10_000_000, t0);
        assert_eq!(
            r.update_at(0, t0).as_deref(),
            Some("model.safetensors: downloading 9.54 MiB")
        );
        r.update_at(10_000_000, at(2));
        assert_eq!(
            r.finish_at(at(2)),
            "model.safetensors: done, 9.54 MiB in 2.0 s (4.77 MiB/s)"
        );
    }

    #[test]
    fn a_new_attempt_starts_counting_again() {
        let t0 = Instant::now();
        let mut r = Reporter::new(ProgressMode::Log, "f");
        r.init_at(100, t0);
        assert_eq!(r.update_at(0, t0), None, "a fresh start is not a resume");
        r.update_at(40, t0);
        r.init_at(100, t0);
        assert!(r.update_at(40, t0).unwrap().contains("resuming"));
        assert_eq!(r.done(), 40);
    }
}
