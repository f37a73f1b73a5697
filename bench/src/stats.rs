//! Percentiles over recorded latencies (exact: a run records at most a few tens of thousands).

use std::time::Duration;

/// Nearest-rank percentile of an ascending slice: the smallest value with at least `p`% of the
/// samples at or below it. `None` for an empty slice.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

/// p50, p99 and max in milliseconds (NaN when there are no samples).
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        Summary {
            p50_ms: ms(percentile(samples, 50.0)),
            p99_ms: ms(percentile(samples, 99.0)),
            max_ms: ms(samples.last().copied()),
        }
    }
}

/// Median of a few measurements (the upper one of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&s, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&s, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&s, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&s, 0.0), Some(Duration::from_millis(1)));
        // 99th of 10 samples is the largest one, not an interpolation.
        let s = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 1000]);
        assert_eq!(percentile(&s, 99.0), Some(Duration::from_millis(1000)));
        assert_eq!(percentile(&s, 50.0), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_sorts_its_input() {
        let mut s = ms(&[9, 1, 5]);
        let sum = Summary::of(&mut s);
        assert_eq!(sum.p50_ms, 5.0);
        assert_eq!(sum.max_ms, 9.0);
        assert!(Summary::of(&mut []).p50_ms.is_nan());
    }

    #[test]
    fn median_of_three() {
        assert_eq!(median(&[30.0, 10.0, 20.0]), 20.0);
        assert!(median(&[]).is_nan());
    }
}
