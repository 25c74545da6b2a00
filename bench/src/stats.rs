//! Percentiles over samples, by the nearest-rank method: every reported
//! percentile is one of the measured values, never an interpolation.

/// Samples sorted once, for several percentiles.
#[derive(Debug, Clone)]
pub struct Samples {
    sorted: Vec<f64>,
}

impl Samples {
    pub fn new(mut values: Vec<f64>) -> Self {
        values.retain(|v| v.is_finite());
        values.sort_by(f64::total_cmp);
        Self { sorted: values }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// The `p`-th percentile (0–100); 0 with no samples.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        let rank = (p / 100.0 * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    pub fn median(&self) -> f64 {
        self.percentile(50.0)
    }

    pub fn max(&self) -> f64 {
        self.sorted.last().copied().unwrap_or(0.0)
    }

    pub fn mean(&self) -> f64 {
        if self.sorted.is_empty() { 0.0 } else { self.sorted.iter().sum::<f64>() / self.sorted.len() as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples = Samples::new((1..=100).map(f64::from).collect());
        let cases = [(50.0, 50.0), (99.0, 99.0), (99.9, 100.0), (0.0, 1.0), (100.0, 100.0)];
        for (p, want) in cases {
            assert_eq!(samples.percentile(p), want, "p{p}");
        }
        assert_eq!(Samples::new(vec![3.0, 1.0, 2.0]).median(), 2.0);
        assert_eq!(Samples::new(vec![]).percentile(99.0), 0.0);
        assert_eq!(Samples::new(vec![f64::NAN, 1.0]).len(), 1);
    }
}
