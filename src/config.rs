//! The safety budget: when the stop signal and SIGKILL must be sent, measured from the send
//! time of the last heartbeat the leader confirmed (`t_ok`).
//!
//! ```text
//! child dead by:   D = t_ok + T*(1-ρ) - (tick + h)
//! SIGKILL at:      D - K
//! stop signal at:  D - K - G      (the "disconnect threshold", measured from t_ok)
//! ```
//!
//! `T` is the *negotiated* session timeout, `ρ` a clock-rate error bound (1%), `tick` the
//! server's tickTime, `h` the heartbeat period, `K` an allowance for kill-and-reap, `G` the grace
//! between the stop signal and SIGKILL. Pure arithmetic, no I/O.

use std::fmt;
use std::time::Duration;

/// Clock-rate error bound ρ, in parts per thousand.
pub const RHO_PERMILLE: u32 = 10;
/// K: time allowed between SIGKILL and the child being reaped.
pub const KILL_ALLOWANCE: Duration = Duration::from_millis(400);
/// Default grace is this fraction (percent) of the room between t_ok and SIGKILL...
const DEFAULT_GRACE_PERCENT: u32 = 30;
/// ...but never more than this.
const DEFAULT_GRACE_MAX: Duration = Duration::from_secs(5);
/// The heartbeat period is the session timeout divided by this.
const HEARTBEATS_PER_TIMEOUT: u32 = 10;
const HEARTBEAT_MIN: Duration = Duration::from_millis(50);

/// What the user asked for (or left to the defaults), plus the negotiated session timeout.
#[derive(Clone, Copy, Debug)]
pub struct BudgetRequest {
    pub session_timeout: Duration,
    pub tick: Duration,
    pub threshold: Option<Duration>,
    pub grace: Option<Duration>,
}

/// A validated budget: every figure the supervisor needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub session_timeout: Duration,
    pub tick: Duration,
    /// h: how often the holder sends a heartbeat through the leader.
    pub heartbeat: Duration,
    /// D - t_ok: the child must be dead this long after t_ok.
    pub dead_by: Duration,
    /// D - K - G - t_ok: the stop signal goes out this long after t_ok.
    pub threshold: Duration,
    /// G: between the stop signal and SIGKILL.
    pub grace: Duration,
}

/// A threshold or grace that does not fit; the message shows the arithmetic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct BudgetError(String);

impl fmt::Display for BudgetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn show(d: Duration) -> String {
    // Millisecond precision is plenty for messages.
    let d = Duration::from_millis(d.as_millis() as u64);
    if d.is_zero() {
        "0s".into()
    } else {
        humantime::format_duration(d).to_string().replace(' ', "")
    }
}

fn floor_10ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 10 * 10)
}

impl Budget {
    /// The heartbeat period for a negotiated session timeout.
    pub fn heartbeat_for(session_timeout: Duration) -> Duration {
        (session_timeout / HEARTBEATS_PER_TIMEOUT).max(HEARTBEAT_MIN)
    }

    /// Computes and validates the budget. Explicit values are checked, never clamped; defaults
    /// are derived from what is left.
    pub fn compute(req: BudgetRequest) -> Result<Budget, BudgetError> {
        let t = req.session_timeout;
        let h = Self::heartbeat_for(t);
        let t_scaled = t * (1000 - RHO_PERMILLE) / 1000;
        let formula = format!(
            "{} x (1 - {}%) - tick {} - heartbeat {}",
            show(t),
            RHO_PERMILLE as f64 / 10.0,
            show(req.tick),
            show(h)
        );
        let Some(dead_by) = t_scaled.checked_sub(req.tick + h).filter(|d| *d > KILL_ALLOWANCE) else {
            return Err(BudgetError(format!(
                "session timeout {} leaves no safety budget: {formula} - kill allowance {} is not positive; \
                 ask for a longer --session-timeout (or give the server's real --server-tick)",
                show(t),
                show(KILL_ALLOWANCE)
            )));
        };
        // Room between t_ok and SIGKILL: threshold + grace must fit in it.
        let room = dead_by - KILL_ALLOWANCE;
        let budget_text = format!(
            "the safety budget for the negotiated session timeout is {} ({formula} - kill allowance {})",
            show(room),
            show(KILL_ALLOWANCE)
        );
        let default_grace = floor_10ms((room * DEFAULT_GRACE_PERCENT / 100).min(DEFAULT_GRACE_MAX));
        let (threshold, grace) = match (req.threshold, req.grace) {
            (Some(th), Some(g)) => {
                if th + g > room {
                    return Err(BudgetError(format!(
                        "--disconnect-threshold {} + --grace {} = {} does not fit: {budget_text}",
                        show(th),
                        show(g),
                        show(th + g)
                    )));
                }
                (th, g)
            }
            (Some(th), None) => {
                if th >= room {
                    return Err(BudgetError(format!(
                        "--disconnect-threshold {} leaves no time for --grace: {budget_text}",
                        show(th)
                    )));
                }
                (th, default_grace.min(room - th))
            }
            (None, Some(g)) => {
                if g >= room {
                    return Err(BudgetError(format!(
                        "--grace {} leaves no time before the stop signal: {budget_text}",
                        show(g)
                    )));
                }
                (room - g, g)
            }
            (None, None) => (room - default_grace, default_grace),
        };
        if threshold.is_zero() {
            return Err(BudgetError(format!("--disconnect-threshold must be positive: {budget_text}")));
        }
        Ok(Budget { session_timeout: t, tick: req.tick, heartbeat: h, dead_by, threshold, grace })
    }

    /// Offset from t_ok at which SIGKILL goes out (D - K).
    pub fn kill_after(&self) -> Duration {
        self.threshold + self.grace
    }

    /// One line for `-v`: the figures in force.
    pub fn describe(&self) -> String {
        format!(
            "session timeout {}, heartbeat every {}, stop signal {} and SIGKILL {} after the last confirmed heartbeat (child dead by {})",
            show(self.session_timeout),
            show(self.heartbeat),
            show(self.threshold),
            show(self.kill_after()),
            show(self.dead_by)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn req(t: u64, tick: u64) -> BudgetRequest {
        BudgetRequest { session_timeout: ms(t), tick: ms(tick), threshold: None, grace: None }
    }

    #[test]
    fn design_example_10s() {
        // safety.md: T = 10 s, h = 1 s: stop signal about 4.5 s and SIGKILL about 6.5 s after t_ok.
        let b = Budget::compute(req(10_000, 2_000)).unwrap();
        assert_eq!(b.heartbeat, ms(1_000));
        assert_eq!(b.dead_by, ms(6_900)); // 9.9 - 2 - 1
        assert_eq!(b.kill_after(), ms(6_500)); // D - K
        assert_eq!(b.grace, ms(1_950)); // 30% of 6.5 s
        assert_eq!(b.threshold, ms(4_550));
    }

    #[test]
    fn design_example_30s() {
        // T = 30 s, h = 3 s: about 19 s and 24 s.
        let b = Budget::compute(req(30_000, 2_000)).unwrap();
        assert_eq!(b.heartbeat, ms(3_000));
        assert_eq!(b.dead_by, ms(24_700));
        assert_eq!(b.kill_after(), ms(24_300));
        assert_eq!(b.grace, ms(5_000)); // capped
        assert_eq!(b.threshold, ms(19_300));
    }

    #[test]
    fn explicit_values_fit_or_fail_with_arithmetic() {
        let mut r = req(10_000, 2_000);
        r.threshold = Some(ms(4_000));
        r.grace = Some(ms(2_500));
        let b = Budget::compute(r).unwrap();
        assert_eq!((b.threshold, b.grace), (ms(4_000), ms(2_500)));

        r.grace = Some(ms(2_501));
        let e = Budget::compute(r).unwrap_err().to_string();
        assert!(e.contains("--disconnect-threshold 4s + --grace 2s501ms = 6s501ms does not fit"), "{e}");
        assert!(e.contains("6s500ms (10s x (1 - 1%) - tick 2s - heartbeat 1s - kill allowance 400ms)"), "{e}");
    }

    #[test]
    fn only_threshold_given_grace_takes_what_is_left() {
        let mut r = req(10_000, 2_000);
        r.threshold = Some(ms(6_000));
        let b = Budget::compute(r).unwrap();
        assert_eq!((b.threshold, b.grace), (ms(6_000), ms(500)));
        r.threshold = Some(ms(6_500));
        assert!(Budget::compute(r).unwrap_err().to_string().contains("leaves no time for --grace"));
    }

    #[test]
    fn only_grace_given_threshold_takes_what_is_left() {
        let mut r = req(10_000, 2_000);
        r.grace = Some(ms(500));
        let b = Budget::compute(r).unwrap();
        assert_eq!((b.threshold, b.grace), (ms(6_000), ms(500)));
        r.grace = Some(ms(7_000));
        assert!(Budget::compute(r).unwrap_err().to_string().contains("leaves no time before the stop signal"));
    }

    #[test]
    fn too_short_session_is_an_error() {
        // 4 s with a 2 s tick: 3.96 - 2 - 0.4 = 1.56 > K, fits.
        assert!(Budget::compute(req(4_000, 2_000)).is_ok());
        // 3 s with a 2 s tick: 2.97 - 2 - 0.3 = 0.67... minus K = 0.27 > 0: fits, barely.
        assert!(Budget::compute(req(3_000, 2_000)).is_ok());
        let e = Budget::compute(req(2_500, 2_000)).unwrap_err().to_string();
        assert!(e.contains("leaves no safety budget"), "{e}");
    }

    #[test]
    fn short_test_sessions() {
        // What the fault tests use: tickTime 500 ms, T = 4 s.
        let b = Budget::compute(req(4_000, 500)).unwrap();
        assert_eq!(b.heartbeat, ms(400));
        assert_eq!(b.dead_by, ms(3_060));
        assert_eq!(b.threshold + b.grace, ms(2_660));
        assert!(b.threshold > b.grace);
    }

    #[test]
    fn budget_invariant_holds_for_many_inputs() {
        for t in (1_000..60_000).step_by(700) {
            for tick in [100, 500, 1_000, 2_000] {
                if let Ok(b) = Budget::compute(req(t, tick)) {
                    let t_scaled = ms(t) * 99 / 100;
                    assert_eq!(b.dead_by, t_scaled - ms(tick) - b.heartbeat);
                    assert!(b.threshold + b.grace + KILL_ALLOWANCE <= b.dead_by, "{b:?}");
                    assert!(!b.threshold.is_zero());
                }
            }
        }
    }
}
