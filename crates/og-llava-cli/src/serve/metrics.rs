//! `GET /metrics`: the server's counters in Prometheus' text format — requests by status,
//! queue depth, sequences decoding, tokens generated and their rate, time to first token.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the time-to-first-token histogram's buckets.
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The window the token rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<u16, u64>>,
    cancelled: AtomicU64,
    queued: AtomicUsize,
    active: AtomicUsize,
    generated: AtomicU64,
    /// (when, tokens) of the recent steps, for the rate.
    recent: Mutex<VecDeque<(Instant, usize)>>,
    ttft: Mutex<Histogram>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; TTFT_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    /// A request answered with `status` (for a stream: the status it began with).
    pub fn request(&self, status: u16) {
        *self
            .requests
            .lock()
            .expect("metrics")
            .entry(status)
            .or_default() += 1;
    }

    /// A sequence whose client went away before it finished.
    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn enqueued(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dequeued(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn set_active(&self, n: usize) {
        self.active.store(n, Ordering::Relaxed);
    }

    pub fn generated(&self, n: usize) {
        self.generated.fetch_add(n as u64, Ordering::Relaxed);
        let now = Instant::now();
        let mut recent = self.recent.lock().expect("metrics");
        recent.push_back((now, n));
        while recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            recent.pop_front();
        }
    }

    pub fn first_token(&self, after: Duration) {
        let s = after.as_secs_f64();
        let mut h = self.ttft.lock().expect("metrics");
        for (bound, count) in TTFT_BUCKETS.iter().zip(h.counts.iter_mut()) {
            if s <= *bound {
                *count += 1;
            }
        }
        h.count += 1;
        h.sum += s;
    }

    /// Tokens per second over the last [`RATE_WINDOW`].
    fn rate(&self) -> f64 {
        let now = Instant::now();
        let recent = self.recent.lock().expect("metrics");
        let tokens: usize = recent
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= RATE_WINDOW)
            .map(|(_, n)| n)
            .sum();
        tokens as f64 / RATE_WINDOW.as_secs_f64()
    }

    /// The Prometheus exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let name = "og_llava_requests_total";
        header(
            &mut out,
            name,
            "counter",
            "Chat completion requests by HTTP status.",
        );
        for (status, n) in self.requests.lock().expect("metrics").iter() {
            let _ = writeln!(out, "{name}{{status=\"{status}\"}} {n}");
        }
        let gauges = [
            (
                "og_llava_cancelled_total",
                "counter",
                "Sequences dropped because their client went away.",
                self.cancelled.load(Ordering::Relaxed) as f64,
            ),
            (
                "og_llava_queue_depth",
                "gauge",
                "Requests waiting to join the batch.",
                self.queued() as f64,
            ),
            (
                "og_llava_active_sequences",
                "gauge",
                "Sequences decoding.",
                self.active.load(Ordering::Relaxed) as f64,
            ),
            (
                "og_llava_generated_tokens_total",
                "counter",
                "Completion tokens generated.",
                self.generated.load(Ordering::Relaxed) as f64,
            ),
            (
                "og_llava_tokens_per_second",
                "gauge",
                "Completion tokens per second over the last 10 s.",
                self.rate(),
            ),
        ];
        for (name, kind, help, value) in gauges {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        let name = "og_llava_time_to_first_token_seconds";
        let help = "From a request's arrival to its first token.";
        header(&mut out, name, "histogram", help);
        let h = self.ttft.lock().expect("metrics");
        for (bound, count) in TTFT_BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            h.count, h.sum, h.count
        );
        out
    }
}

/// A metric's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_counts_what_happened() {
        let m = Metrics::default();
        m.request(200);
        m.request(200);
        m.request(429);
        m.enqueued();
        m.generated(5);
        m.first_token(Duration::from_millis(30));
        let text = m.render();
        assert!(text.contains("og_llava_requests_total{status=\"200\"} 2"));
        assert!(text.contains("og_llava_requests_total{status=\"429\"} 1"));
        assert!(text.contains("og_llava_queue_depth 1"));
        assert!(text.contains("og_llava_generated_tokens_total 5"));
        assert!(text.contains("og_llava_tokens_per_second 0.5"));
        assert!(text.contains("og_llava_time_to_first_token_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("og_llava_time_to_first_token_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("og_llava_time_to_first_token_seconds_count 1"));
    }
}
