//! When each request is due, relative to the start of the run.
//!
//! Owns: the arrival process (constant rate or seeded Poisson) as a pure
//! iterator of offsets, and the per-request traffic choices (user, item,
//! recommend or event). Must not touch: the clock or the network — the
//! scheduler in `mod.rs` turns offsets into sleeps.
//!
//! Offsets are computed from the request index (constant) or as a running
//! sum from the start (Poisson), never from "now", so a late request does
//! not push later ones back: the schedule is open loop by construction.

use super::args::Arrival;
use crate::rng::Rng;
use std::time::Duration;

/// Stream labels for `Rng::derive`, so timing and traffic mix draw from
/// independent streams (changing --events-fraction keeps the same gaps).
const ARRIVAL_STREAM: u64 = 1;
const TRAFFIC_STREAM: u64 = 2;

/// Offsets of request 0, 1, 2, ... from the start, ending before `horizon`.
#[derive(Debug, Clone)]
pub struct Schedule {
    arrival: Arrival,
    qps: f64,
    horizon: Duration,
    index: u64,
    /// Poisson: the running sum of gaps, in seconds.
    poisson_clock: f64,
    rng: Rng,
}

impl Schedule {
    pub fn new(arrival: Arrival, qps: f64, horizon: Duration, seed: u64) -> Schedule {
        Schedule {
            arrival,
            qps,
            horizon,
            index: 0,
            poisson_clock: 0.0,
            rng: Rng::derive(seed, ARRIVAL_STREAM),
        }
    }
}

impl Iterator for Schedule {
    type Item = (u64, Duration);

    fn next(&mut self) -> Option<(u64, Duration)> {
        let seconds = match self.arrival {
            // i / qps from the index, not a running sum, so rounding error
            // cannot accumulate over millions of requests.
            Arrival::Constant => self.index as f64 / self.qps,
            Arrival::Poisson => {
                // The first arrival is at 0 like the constant schedule, so both
                // start measuring at the same moment.
                if self.index > 0 {
                    self.poisson_clock += self.rng.exponential(1.0 / self.qps);
                }
                self.poisson_clock
            }
        };
        if seconds >= self.horizon.as_secs_f64() {
            return None;
        }
        let item = (self.index, Duration::from_secs_f64(seconds));
        self.index += 1;
        Some(item)
    }
}

/// What one scheduled request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Ask recommendations for `users[user]`.
    Recommend { user: usize },
    /// Post a click of `users[user]` on `items[item]`.
    Event { user: usize, item: usize },
}

/// Seeded choice of user, item and call kind for each request in turn.
#[derive(Debug, Clone)]
pub struct TrafficMix {
    rng: Rng,
    users: usize,
    items: usize,
    events_fraction: f64,
}

impl TrafficMix {
    /// `users` must be > 0; `items` may be 0 only if `events_fraction` is 0.
    pub fn new(seed: u64, users: usize, items: usize, events_fraction: f64) -> TrafficMix {
        TrafficMix {
            rng: Rng::derive(seed, TRAFFIC_STREAM),
            users,
            items,
            events_fraction,
        }
    }

    pub fn next_call(&mut self) -> Call {
        let user = self.rng.usize_below(self.users);
        let is_event = self.rng.f64() < self.events_fraction;
        if is_event && self.items > 0 {
            Call::Event {
                user,
                item: self.rng.usize_below(self.items),
            }
        } else {
            Call::Recommend { user }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_schedule_is_index_over_rate_and_stops_at_the_horizon() {
        let offsets: Vec<(u64, Duration)> =
            Schedule::new(Arrival::Constant, 4.0, Duration::from_secs(1), 1).collect();
        let expected: Vec<(u64, Duration)> = (0..4)
            .map(|i| (i, Duration::from_millis(250 * i)))
            .collect();
        assert_eq!(offsets, expected);
        let n = Schedule::new(Arrival::Constant, 200.0, Duration::from_secs(2), 1).count();
        assert_eq!(n, 400);
    }

    #[test]
    fn poisson_is_seeded_increasing_and_has_the_asked_rate() {
        let horizon = Duration::from_secs(100);
        let a: Vec<_> = Schedule::new(Arrival::Poisson, 500.0, horizon, 7).collect();
        let b: Vec<_> = Schedule::new(Arrival::Poisson, 500.0, horizon, 7).collect();
        let c: Vec<_> = Schedule::new(Arrival::Poisson, 500.0, horizon, 8).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.windows(2).all(|w| w[0].1 <= w[1].1));
        // 50 000 expected arrivals; Poisson sd ~ 224, so 2% is ~4.5 sd.
        let n = a.len() as f64;
        assert!((n - 50_000.0).abs() < 1_000.0, "{n}");
        // Exponential gaps have sd == mean; a constant schedule would not.
        let gaps: Vec<f64> = a
            .windows(2)
            .map(|w| (w[1].1 - w[0].1).as_secs_f64())
            .collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!(
            (var.sqrt() / mean - 1.0).abs() < 0.05,
            "cv {}",
            var.sqrt() / mean
        );
    }

    #[test]
    fn traffic_mix_honours_the_events_fraction_and_index_bounds() {
        let mut mix = TrafficMix::new(3, 10, 5, 0.25);
        let calls: Vec<Call> = (0..20_000).map(|_| mix.next_call()).collect();
        let events = calls
            .iter()
            .filter(|c| matches!(c, Call::Event { .. }))
            .count();
        assert!((events as f64 / 20_000.0 - 0.25).abs() < 0.02, "{events}");
        assert!(calls.iter().all(|c| match *c {
            Call::Recommend { user } => user < 10,
            Call::Event { user, item } => user < 10 && item < 5,
        }));
        let mut read_only = TrafficMix::new(3, 10, 0, 0.0);
        assert!((0..1000).all(|_| matches!(read_only.next_call(), Call::Recommend { .. })));
    }
}
