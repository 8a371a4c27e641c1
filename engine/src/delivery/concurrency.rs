//! Adaptive concurrency (AIMD): batches in flight per destination.

use super::*;

/// A call this quick costs less than handing it to a thread of its own.
pub(super) const FAST_CALL: Duration = Duration::from_micros(200);

/// Additive-increase, multiplicative-decrease of the batches in flight.
#[derive(Debug)]
pub(super) struct Aimd {
    pub(super) limit: f64,
    pub(super) max: f64,
    pub(super) adaptive: bool,
    pub(super) rtt_ewma: Option<f64>,
    pub(super) last_cut: Option<Instant>,
    /// Average time of one plugin call, inside the plugin.
    pub(super) call_ewma: Option<f64>,
}

impl Aimd {
    pub(super) fn new(max: u32, adaptive: bool) -> Aimd {
        let max = f64::from(max.max(1));
        Aimd {
            limit: if adaptive { 1.0 } else { max },
            max,
            adaptive,
            rtt_ewma: None,
            last_cut: None,
            call_ewma: None,
        }
    }

    pub(super) fn limit(&self) -> usize {
        self.limit.floor().max(1.0) as usize
    }

    /// Whether the sink's calls take, on average, less than
    /// [`FAST_CALL`]: then small batches share flights even while slots
    /// are free (see `Task::dispatch`).
    pub(super) fn fast_calls(&self) -> bool {
        self.call_ewma.is_some_and(|c| c < FAST_CALL.as_secs_f64())
    }

    /// A flight's calls took `per_call` each, inside the plugin (the
    /// hand-offs around them not counted).
    pub(super) fn observe_calls(&mut self, per_call: Duration) {
        let c = per_call.as_secs_f64();
        self.call_ewma = Some(0.9 * self.call_ewma.unwrap_or(c) + 0.1 * c);
    }

    /// A batch came back after `rtt`; `congested` when the sink throttled or
    /// failed; `busy` when every slot was in use as it was sent.
    pub(super) fn observe(&mut self, rtt: Duration, congested: bool, busy: bool) {
        if !self.adaptive {
            return;
        }
        let rtt = rtt.as_secs_f64();
        let ewma = self.rtt_ewma.unwrap_or(rtt);
        if congested {
            // At most one cut per round trip: the batches already in flight
            // saw the same congestion.
            if self
                .last_cut
                .is_none_or(|t| t.elapsed().as_secs_f64() > ewma)
            {
                self.limit = (self.limit / 2.0).max(1.0);
                self.last_cut = Some(Instant::now());
            }
        } else if busy && rtt <= ewma * 1.5 + 0.001 {
            self.limit = (self.limit + 1.0 / self.limit).min(self.max);
        }
        self.rtt_ewma = Some(0.9 * ewma + 0.1 * rtt);
    }
}
