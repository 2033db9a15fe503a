//! Counting what a load run saw: a small log-linear latency histogram (about 3 %
//! resolution, fixed size, no allocation per sample), per-status counts, and CPU time
//! read from `/proc`.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

/// Linear sub-buckets per power of two: 32 gives at most 1/32 relative error.
const SUB_BUCKETS: u64 = 32;
const SUB_BITS: u32 = 5;
/// Enough powers of two for up to ~2^40 µs.
const BUCKETS: usize = (40 * SUB_BUCKETS) as usize;

/// Latencies in microseconds.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max_us: 0,
        }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < SUB_BUCKETS {
        return usize::try_from(value).unwrap_or(0);
    }
    let power = 63 - value.leading_zeros(); // >= SUB_BITS
    let shift = power - SUB_BITS;
    let sub = (value >> shift) - SUB_BUCKETS; // 0..SUB_BUCKETS
    let index = u64::from(shift + 1) * SUB_BUCKETS + sub;
    usize::try_from(index).unwrap_or(BUCKETS - 1).min(BUCKETS - 1)
}

/// The largest value that falls into `index`.
fn upper_of(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return index;
    }
    let shift = index / SUB_BUCKETS - 1;
    let sub = index % SUB_BUCKETS;
    ((SUB_BUCKETS + sub + 1) << shift) - 1
}

impl Histogram {
    /// Records one latency.
    pub fn record(&mut self, latency: StdDuration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(micros)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(micros);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The `quantile` (0..=1) in microseconds, as the upper edge of its bucket.
    pub fn quantile_us(&self, quantile: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let wanted = ((self.total as f64) * quantile).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return upper_of(index).min(self.max_us);
            }
        }
        self.max_us
    }

    /// The largest sample in microseconds.
    pub fn max_us(&self) -> u64 {
        self.max_us
    }
}

/// What one connection (or a whole run, merged) counted.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Answers with the expected status, inside the measured window.
    pub ok: u64,
    /// Answers with another status, by status.
    pub other_statuses: BTreeMap<u16, u64>,
    /// The first unexpected answer, for the log.
    pub first_unexpected: Option<String>,
    /// Connection-level failures (the connection then stops).
    pub failures: u64,
    /// The first failure, for the log.
    pub first_failure: Option<String>,
    /// Latency of the `ok` answers.
    pub latency: Histogram,
}

impl Tally {
    /// Adds another tally.
    pub fn merge(&mut self, other: &Tally) {
        self.ok += other.ok;
        for (status, count) in &other.other_statuses {
            *self.other_statuses.entry(*status).or_default() += count;
        }
        if self.first_unexpected.is_none() {
            self.first_unexpected.clone_from(&other.first_unexpected);
        }
        self.failures += other.failures;
        if self.first_failure.is_none() {
            self.first_failure.clone_from(&other.first_failure);
        }
        self.latency.merge(&other.latency);
    }

    /// Answers with an unexpected status.
    pub fn unexpected(&self) -> u64 {
        self.other_statuses.values().sum()
    }

    /// `304:12,413:3` or `-`.
    pub fn statuses_text(&self) -> String {
        if self.other_statuses.is_empty() {
            return "-".to_owned();
        }
        self.other_statuses
            .iter()
            .map(|(status, count)| format!("{status}:{count}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Clock ticks per second of `/proc/*/stat` times. Linux has used 100 on every
/// mainstream architecture for decades; reading the real value needs `sysconf`, which
/// would need `libc` for nothing else.
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds of process `pid` (`self` for this one), from `/proc`.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: skip past it.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of the file (utime, stime) are 11 and 12 after the name.
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / TICKS_PER_SECOND)
}

/// CPU seconds the whole machine spent busy (all CPUs, every process and the kernel),
/// from the first line of `/proc/stat`: with the server's and this tool's own CPU time
/// subtracted, what is left is other work sharing the machine during a run.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    let busy: f64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(index, _)| *index != 3 && *index != 4)
        .map(|(_, ticks)| ticks)
        .sum();
    Some(busy / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut previous = 0;
        for value in (0..100_000u64).chain([1 << 20, 1 << 30, u64::from(u32::MAX)]) {
            let index = bucket_of(value);
            assert!(index >= previous, "{value}");
            previous = index;
            let upper = upper_of(index);
            assert!(upper >= value, "{value} <= {upper}");
            assert!(
                (upper - value) as f64 <= (value as f64) / 30.0 + 1.0,
                "{value} vs {upper}"
            );
        }
    }

    #[test]
    fn quantiles() {
        let mut histogram = Histogram::default();
        for micros in 1..=1000u64 {
            histogram.record(StdDuration::from_micros(micros));
        }
        let p50 = histogram.quantile_us(0.5);
        assert!((490..=520).contains(&p50), "{p50}");
        assert_eq!(histogram.quantile_us(1.0), 1000);
    }
}
