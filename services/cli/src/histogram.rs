//! Prometheus histograms read back from the text exposition format: what a run added to one
//! (the difference of two scrapes) and its quantiles, estimated the way PromQL's
//! `histogram_quantile` does (linear within the bucket the rank falls in).

/// One histogram: cumulative counts by upper bound (`+Inf` last), and sum. The default is one
/// with nothing observed (a labelled series appears in a scrape only once it was observed).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
}

/// The labels of a sample line (`{a="x",b="y"}`), as pairs; None if malformed. Label values
/// the suite exports hold no quotes, commas or escapes.
fn labels(block: &str) -> Option<Vec<(&str, &str)>> {
    if block.is_empty() {
        return Some(Vec::new());
    }
    block
        .split(',')
        .map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name, value.strip_prefix('"')?.strip_suffix('"')?))
        })
        .collect()
}

/// A sample line of `series` (`series{labels} value` or `series value`): its labels and value.
fn sample<'t>(line: &'t str, series: &str) -> Option<(Vec<(&'t str, &'t str)>, f64)> {
    let rest = line.strip_prefix(series)?;
    let (block, value) = match rest.strip_prefix('{') {
        Some(labelled) => labelled.split_once("} ")?,
        None => ("", rest.strip_prefix(' ')?),
    };
    Some((labels(block)?, value.trim().parse().ok()?))
}

impl Histogram {
    /// The histogram `name` of a scrape, if it has one (every series of it summed by bound, as
    /// PromQL's `sum by (le)`; the suite's own are unlabelled).
    pub fn parse(text: &str, name: &str) -> Option<Self> {
        Self::parse_where(text, name, &[])
    }

    /// The series of histogram `name` whose labels include all of `wanted`, summed by bound.
    pub fn parse_where(text: &str, name: &str, wanted: &[(&str, &str)]) -> Option<Self> {
        let (bucket, sum) = (format!("{name}_bucket"), format!("{name}_sum"));
        let mut by_bound: Vec<(f64, f64)> = Vec::new();
        let mut total = None;
        let chosen = |labels: &[(&str, &str)]| wanted.iter().all(|w| labels.contains(w));
        for line in text.lines() {
            if let Some((labels, count)) = sample(line, &bucket) {
                if !chosen(&labels) {
                    continue;
                }
                let (_, le) = *labels.iter().find(|(n, _)| *n == "le")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                match by_bound.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += count,
                    None => by_bound.push((le, count)),
                }
            } else if let Some((labels, value)) = sample(line, &sum)
                && chosen(&labels)
            {
                *total.get_or_insert(0.0) += value;
            }
        }
        by_bound.sort_by(|a, b| a.0.total_cmp(&b.0));
        (!by_bound.is_empty() && by_bound.last()?.0.is_infinite()).then_some(Self {
            buckets: by_bound,
            sum: total?,
        })
    }

    /// The share (0–1) of observations above `bound`, which must be one of the bucket bounds
    /// (then the figure is exact, not interpolated); None otherwise or if nothing was observed.
    pub fn share_above(&self, bound: f64) -> Option<f64> {
        let count = self.count();
        let (_, at_or_below) = self.buckets.iter().find(|(le, _)| *le == bound)?;
        (count > 0.0).then(|| (count - at_or_below) / count)
    }

    /// What was observed after `earlier` (a scrape of the same series) up to this one.
    pub fn since(&self, earlier: &Self) -> Self {
        let before = |le: f64| {
            earlier
                .buckets
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, c)| *c)
        };
        Self {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, count)| (le, (count - before(le)).max(0.0)))
                .collect(),
            sum: self.sum - earlier.sum,
        }
    }

    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |(_, c)| *c)
    }

    pub fn mean(&self) -> Option<f64> {
        let count = self.count();
        (count > 0.0).then(|| self.sum / count)
    }

    /// The `q` quantile (0–1), interpolated within its bucket from the bucket below's bound
    /// (0 for the first); one in the `+Inf` bucket is the highest finite bound (a floor).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank && cumulative > below {
                if le.is_infinite() {
                    return Some(lower);
                }
                return Some(lower + (le - lower) * (rank - below) / (cumulative - below));
            }
            if le.is_finite() {
                lower = le;
            }
            below = cumulative;
        }
        Some(lower)
    }
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    const SCRAPE: &str = "\
# HELP stage_seconds A stage.
# TYPE stage_seconds histogram
stage_seconds_bucket{le=\"0.001\"} 10
stage_seconds_bucket{le=\"0.002\"} 30
stage_seconds_bucket{le=\"0.005\"} 38
stage_seconds_bucket{le=\"+Inf\"} 40
stage_seconds_sum 0.09
stage_seconds_count 40
other_seconds_bucket{le=\"+Inf\"} 3
other_seconds_sum 1
";

    #[test]
    fn a_scrape_reads_back_as_its_buckets_and_sum() {
        let h = Histogram::parse(SCRAPE, "stage_seconds").unwrap();
        assert_eq!(h.count(), 40.0);
        assert!((h.mean().unwrap() - 0.00225).abs() < 1e-12);
        assert_eq!(
            Histogram::parse(SCRAPE, "other_seconds").unwrap().count(),
            3.0
        );
        assert!(Histogram::parse(SCRAPE, "missing_seconds").is_none());
        // No +Inf bucket: not a histogram this can read.
        assert!(Histogram::parse("x_bucket{le=\"1\"} 1\nx_sum 1\n", "x").is_none());
    }

    #[test]
    fn labelled_series_are_chosen_by_their_labels_and_summed_by_bound() {
        let scrape = "\
rpc_seconds_bucket{method=\"Submit\",service=\"intake\",le=\"0.01\"} 90
rpc_seconds_bucket{method=\"Submit\",service=\"intake\",le=\"0.025\"} 99
rpc_seconds_bucket{method=\"Submit\",service=\"intake\",le=\"+Inf\"} 100
rpc_seconds_sum{method=\"Submit\",service=\"intake\"} 0.8
rpc_seconds_bucket{method=\"Get\",service=\"intake\",le=\"0.01\"} 5
rpc_seconds_bucket{method=\"Get\",service=\"intake\",le=\"0.025\"} 5
rpc_seconds_bucket{method=\"Get\",service=\"intake\",le=\"+Inf\"} 10
rpc_seconds_sum{method=\"Get\",service=\"intake\"} 0.5
";
        let submit =
            Histogram::parse_where(scrape, "rpc_seconds", &[("method", "Submit")]).unwrap();
        assert_eq!(submit.count(), 100.0);
        assert!((submit.mean().unwrap() - 0.008).abs() < 1e-12);
        // Exactly one in a hundred above 25 ms, read at the bound, not interpolated.
        assert!((submit.share_above(0.025).unwrap() - 0.01).abs() < 1e-12);
        assert!((submit.share_above(0.01).unwrap() - 0.10).abs() < 1e-12);
        assert_eq!(submit.share_above(0.02), None, "not a bound");
        // Every series of the name: summed by bound.
        let all = Histogram::parse(scrape, "rpc_seconds").unwrap();
        assert_eq!(all.count(), 110.0);
        assert!((all.share_above(0.01).unwrap() - 15.0 / 110.0).abs() < 1e-12);
        assert!(Histogram::parse_where(scrape, "rpc_seconds", &[("method", "Nope")]).is_none());
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let h = Histogram::parse(SCRAPE, "stage_seconds").unwrap();
        // Rank 20 of 40 lies halfway through (0.001, 0.002] (10 below, 30 at its top).
        assert!((h.quantile(0.5).unwrap() - 0.0015).abs() < 1e-12);
        // Rank 5: halfway through the first bucket, which starts at 0.
        assert!((h.quantile(0.125).unwrap() - 0.0005).abs() < 1e-12);
        // Rank 39.6 is past the last finite bound: the bound is all that can be said.
        assert_eq!(h.quantile(0.99), Some(0.005));
        assert_eq!(h.quantile(1.0), Some(0.005));
    }

    #[test]
    fn the_difference_of_two_scrapes_is_what_the_run_observed() {
        let before = Histogram::parse(SCRAPE, "stage_seconds").unwrap();
        let after = Histogram::parse(
            // 20 more observations, all in (0.002, 0.005].
            &SCRAPE
                .replace("0.005\"} 38", "0.005\"} 58")
                .replace("+Inf\"} 40", "+Inf\"} 60")
                .replace("stage_seconds_sum 0.09", "stage_seconds_sum 0.15"),
            "stage_seconds",
        )
        .unwrap();
        let run = after.since(&before);
        assert_eq!(run.count(), 20.0);
        assert!((run.mean().unwrap() - 0.003).abs() < 1e-12);
        // All 20 fell in (0.002, 0.005]: the median is halfway through it.
        assert!((run.quantile(0.5).unwrap() - 0.0035).abs() < 1e-12);
        // Nothing observed: no quantile.
        assert_eq!(before.since(&before).quantile(0.5), None);
    }
}
