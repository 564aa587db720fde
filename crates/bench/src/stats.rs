//! Percentiles from a sorted `Vec`, and the formatting the result tables use.

use std::time::Duration;

/// The latency figures of one measurement.
#[derive(Debug, Clone, Copy)]
pub struct Latencies {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl Latencies {
    /// Sorts `samples` and reads the percentiles (nearest rank); `None` when empty.
    pub fn of(mut samples: Vec<Duration>) -> Option<Latencies> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        Some(Latencies {
            p50: nearest_rank(&samples, 50.0),
            p99: nearest_rank(&samples, 99.0),
            max: *samples.last().expect("not empty"),
        })
    }
}

/// The nearest-rank percentile of sorted, non-empty samples.
fn nearest_rank(sorted: &[Duration], percentile: f64) -> Duration {
    let rank = ((percentile / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds with two decimals, or `n/a`.
pub fn ms(duration: Option<Duration>) -> String {
    match duration {
        Some(d) => format!("{:.2} ms", d.as_secs_f64() * 1000.0),
        None => "n/a".to_owned(),
    }
}

/// After a table's `done` count: how many replies ended otherwise, if any.
pub fn other_outcomes(count: usize) -> String {
    if count > 0 {
        format!(" ({count} other outcomes)")
    } else {
        String::new()
    }
}

/// Three table cells: p50, p99 and max in milliseconds (`n/a` without samples).
pub fn p50_p99_max(latencies: Option<Latencies>) -> String {
    format!(
        "{} | {} | {}",
        ms(latencies.map(|l| l.p50)),
        ms(latencies.map(|l| l.p99)),
        ms(latencies.map(|l| l.max)),
    )
}

/// A rate per second from a count and the time it took.
pub fn per_second(count: usize, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        return 0.0;
    }
    count as f64 / elapsed.as_secs_f64()
}

/// The 1, 5 and 15-minute load averages, to show how busy the shared machine was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// A line under a table with the load average when the run ended.
pub fn print_load() {
    println!(
        "\n_Load average (1, 5, 15 min) when this run ended: {}._",
        load_average()
    );
}
