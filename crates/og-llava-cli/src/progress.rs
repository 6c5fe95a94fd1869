//! One line of progress on stderr for long loops.

use std::time::Instant;

/// `name 12/340 [3%] 1.9 items/s ETA 2m53s` on one line of stderr, at most once a second.
pub struct Progress {
    name: String,
    unit: &'static str,
    start: Instant,
    first: Option<usize>,
    shown: Option<Instant>,
}

impl Progress {
    pub fn new(name: impl Into<String>, unit: &'static str) -> Self {
        Self {
            name: name.into(),
            unit,
            start: Instant::now(),
            first: None,
            shown: None,
        }
    }

    /// Reports `done` of `total`; the rate and ETA count only what was done since the first
    /// report (a resumed run starts with some already done).
    pub fn show(&mut self, done: usize, total: usize) {
        let due = self.shown.is_none_or(|t| t.elapsed().as_secs_f64() >= 1.0);
        if !due && done < total {
            return;
        }
        self.shown = Some(Instant::now());
        let first = *self.first.get_or_insert(done);
        let (fresh, secs) = (done - first, self.start.elapsed().as_secs_f64());
        let rate = fresh as f64 / secs.max(1e-9);
        let eta = if fresh > 0 {
            let s = ((total - done) as f64 / rate).round() as u64;
            format!("ETA {}m{:02}s", s / 60, s % 60)
        } else {
            "ETA --".into()
        };
        eprint!(
            "\r{} {done}/{total} [{}%] {rate:.2} {}/s {eta}   ",
            self.name,
            100 * done / total.max(1),
            self.unit
        );
        if done == total {
            eprintln!();
        }
    }
}
