//! Measuring: CPU time of this process, peak memory, percentiles, and the results table.

use std::fmt;
use std::time::Duration;

/// One measured run of one subject in one scenario.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub subject: String,
    pub messages: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    /// CPU seconds of the whole process per million messages, when measured.
    pub cpu_s_per_million: Option<f64>,
    /// Anything else worth reporting (percentiles, RSS, ratios).
    pub notes: String,
}

impl Row {
    pub fn throughput(
        scenario: &'static str,
        subject: impl Into<String>,
        messages: u64,
        elapsed: Duration,
        cpu: Option<Duration>,
    ) -> Row {
        let seconds = elapsed.as_secs_f64();
        Row {
            scenario,
            subject: subject.into(),
            messages,
            seconds,
            msgs_per_sec: messages as f64 / seconds.max(1e-9),
            cpu_s_per_million: cpu.map(|c| c.as_secs_f64() / (messages as f64 / 1e6)),
            notes: String::new(),
        }
    }
}

impl Row {
    /// The same row with a note.
    pub fn noted(mut self, notes: impl Into<String>) -> Row {
        self.notes = notes.into();
        self
    }
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<8} {:<28} {:>9} msgs {:>8.3} s {:>12.0} msg/s",
            self.scenario, self.subject, self.messages, self.seconds, self.msgs_per_sec
        )?;
        if let Some(cpu) = self.cpu_s_per_million {
            write!(f, " {cpu:>7.3} cpu-s/M")?;
        }
        if !self.notes.is_empty() {
            write!(f, "  {}", self.notes)?;
        }
        Ok(())
    }
}

/// CPU time (user + system) this process has used so far.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Peak resident memory of this process, in MiB (`VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The `q` quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The results as a Markdown table: the mean of each subject's runs, and each kq subject's
/// ratio to its scenario's first baseline.
pub fn table(rows: &[Row]) -> String {
    let mut subjects: Vec<(&str, &str)> = Vec::new();
    for row in rows {
        if !subjects.contains(&(row.scenario, row.subject.as_str())) {
            subjects.push((row.scenario, row.subject.as_str()));
        }
    }
    let mean = |scenario: &str, subject: &str| {
        let runs: Vec<&Row> = rows
            .iter()
            .filter(|r| r.scenario == scenario && r.subject == subject)
            .collect();
        let n = runs.len() as f64;
        let rate = runs.iter().map(|r| r.msgs_per_sec).sum::<f64>() / n;
        let cpu: Option<f64> = runs
            .iter()
            .map(|r| r.cpu_s_per_million)
            .sum::<Option<f64>>()
            .map(|c| c / n);
        (
            rate,
            cpu,
            runs.len(),
            runs.last().map(|r| r.notes.clone()).unwrap_or_default(),
        )
    };
    let mut out = String::from(
        "| scenario | subject | runs | msg/s (mean) | cpu-s per M msgs | vs baseline | notes |\n| --- | --- | ---: | ---: | ---: | --- | --- |\n",
    );
    for &(scenario, subject) in &subjects {
        let (rate, cpu, runs, notes) = mean(scenario, subject);
        let baseline = subjects
            .iter()
            .find(|(s, name)| *s == scenario && name.starts_with("baseline"))
            .map(|(s, name)| mean(s, name));
        let ratio = match baseline {
            Some((base_rate, base_cpu, _, _)) if !subject.starts_with("baseline") => {
                let mut ratio = format!("{:.2}× msg/s", rate / base_rate);
                if let (Some(c), Some(bc)) = (cpu, base_cpu) {
                    ratio.push_str(&format!(", {:.2}× cpu", c / bc));
                }
                ratio
            }
            _ => String::new(),
        };
        out.push_str(&format!(
            "| {scenario} | {subject} | {runs} | {rate:.0} | {} | {ratio} | {notes} |\n",
            cpu.map_or_else(String::new, |c| format!("{c:.3}")),
        ));
    }
    out
}
