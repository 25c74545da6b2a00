//! Time-weighted average of a count (requests in flight, requests held) over
//! a reporting window: the integral of the count over time divided by the
//! window's length, what Knative's queue-proxy reports as concurrency.
//!
//! Time is passed in (nanoseconds, host clock) so the logic is testable with
//! explicit timestamps. A clock that goes backwards adds nothing.

#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrencyAverager {
    current: u64,
    window_start_ns: u64,
    last_change_ns: u64,
    /// Sum of `count × duration` since the window started, in count·ns.
    area: u128,
}

impl ConcurrencyAverager {
    pub fn new(now_ns: u64) -> Self {
        Self { current: 0, window_start_ns: now_ns, last_change_ns: now_ns, area: 0 }
    }

    pub fn current(&self) -> u64 {
        self.current
    }

    pub fn increment(&mut self, now_ns: u64) {
        self.advance(now_ns);
        self.current = self.current.saturating_add(1);
    }

    pub fn decrement(&mut self, now_ns: u64) {
        self.advance(now_ns);
        self.current = self.current.saturating_sub(1);
    }

    /// Nothing counted now and nothing during the window.
    pub fn is_idle(&self) -> bool {
        self.current == 0 && self.area == 0
    }

    /// The average over the window ending at `now_ns`, then starts a new
    /// window there (the current count carries over). An empty window
    /// averages to the current count.
    pub fn take_window(&mut self, now_ns: u64) -> f64 {
        self.advance(now_ns);
        let length = self.last_change_ns.saturating_sub(self.window_start_ns);
        let average = if length == 0 { self.current as f64 } else { self.area as f64 / length as f64 };
        self.window_start_ns = self.last_change_ns;
        self.area = 0;
        average
    }

    fn advance(&mut self, now_ns: u64) {
        if now_ns > self.last_change_ns {
            let elapsed = now_ns - self.last_change_ns;
            self.area = self.area.saturating_add(u128::from(self.current) * u128::from(elapsed));
            self.last_change_ns = now_ns;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn weights_by_time() {
        // 0–250 ms: 0, 250–500 ms: 2, 500–1000 ms: 1 → (0 + 500 + 500) / 1000 = 1.0
        let mut avg = ConcurrencyAverager::new(0);
        avg.increment(250 * MS);
        avg.increment(250 * MS);
        avg.decrement(500 * MS);
        assert!((avg.take_window(1000 * MS) - 1.0).abs() < 1e-9);
        // The next window starts with 1 in flight.
        assert_eq!(avg.current(), 1);
        avg.decrement(1500 * MS);
        assert!((avg.take_window(2000 * MS) - 0.5).abs() < 1e-9);
        assert!(avg.is_idle() || avg.take_window(3000 * MS) == 0.0);
        assert!(avg.is_idle());
    }

    #[test]
    fn clock_going_backwards_adds_nothing() {
        // The decrement stamped 900 ms counts as happening at 1000 ms, the
        // latest time seen: only 1500..2000 has one in flight.
        let mut avg = ConcurrencyAverager::new(0);
        avg.increment(1000 * MS);
        avg.decrement(900 * MS);
        avg.increment(1500 * MS);
        assert!((avg.take_window(2000 * MS) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn empty_window_reports_the_current_count() {
        let mut avg = ConcurrencyAverager::new(5);
        avg.increment(5);
        avg.increment(5);
        assert_eq!(avg.take_window(5), 2.0);
        assert_eq!(avg.take_window(0), 2.0);
    }

    #[test]
    fn decrement_saturates() {
        let mut avg = ConcurrencyAverager::new(0);
        avg.decrement(10);
        assert_eq!(avg.current(), 0);
        assert_eq!(avg.take_window(20), 0.0);
    }
}
