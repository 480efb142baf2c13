//! go-zero's stat line: a consumer's throughput, drops and handler time percentiles over a
//! window.

use std::time::Duration;

use super::outcome::{outcome_index, Outcome};
use super::tally::Tally;

/// Handler times of one stat window (go-zero's `stat.Metrics`).
#[derive(Default)]
pub(super) struct StatWindow {
    handled: u64,
    drops: u64,
    /// Handler times in milliseconds; at most `MAX_SAMPLES` are kept, the count is exact.
    millis: Vec<f64>,
}

pub(super) const MAX_SAMPLES: usize = 100_000;

impl StatWindow {
    pub(super) fn add(&mut self, tally: &Tally) {
        self.handled += tally.handled();
        self.drops += tally.outcomes[outcome_index(Outcome::Failed)];
        let room = MAX_SAMPLES.saturating_sub(self.millis.len());
        self.millis.extend(tally.millis.iter().take(room).copied());
    }

    pub(super) fn line(mut self, name: &str, window: Duration) -> String {
        let qps = self.handled as f64 / window.as_secs_f64().max(1e-9);
        self.millis.sort_by(f64::total_cmp);
        let at = |q: f64| match self.millis.len() {
            0 => 0.0,
            n => self.millis[((n - 1) as f64 * q).round() as usize],
        };
        let avg = match self.millis.len() {
            0 => 0.0,
            n => self.millis.iter().sum::<f64>() / n as f64,
        };
        format!(
            "({name}) - qps: {qps:.1}/s, drops: {}, avg time: {avg:.1}ms, med: {:.1}ms, 90th: {:.1}ms, 99th: {:.1}ms, 99.9th: {:.1}ms",
            self.drops,
            at(0.5),
            at(0.9),
            at(0.99),
            at(0.999)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stat_line_has_go_zeros_fields() {
        let mut tally = Tally::default();
        for ms in 1..=100 {
            tally.record(Outcome::Ok, Duration::from_millis(ms));
        }
        tally.record(Outcome::Failed, Duration::from_millis(1));
        let mut window = StatWindow::default();
        window.add(&tally);
        let line = window.line("payments", Duration::from_secs(60));
        assert!(
            line.starts_with("(payments) - qps: 1.7/s, drops: 1, avg time: 50.0ms, med: 50.0ms, 90th: 90.0ms, 99th: 99.0ms"),
            "{line}"
        );
    }
}
