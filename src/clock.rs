//! Time sources for the safety deadline.
//!
//! The deadline is kept on a clock that keeps counting while the host is suspended
//! (CLOCK_BOOTTIME on Linux). Rust's `Instant` and tokio's timers use CLOCK_MONOTONIC, which
//! stops during suspend, so they are only used to *sleep*, never to decide whether the deadline
//! has passed. Tests use [`TokioClock`], which follows tokio's (pausable) clock.

use std::time::Duration;

/// A monotonic clock: `now()` is the time since an arbitrary fixed origin.
pub trait Clock: Clone + Send + 'static {
    fn now(&self) -> Duration;
}

/// CLOCK_BOOTTIME: monotonic, and counts time spent in suspend.
#[derive(Clone, Copy, Debug, Default)]
pub struct BootClock;

impl Clock for BootClock {
    fn now(&self) -> Duration {
        let ts =
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is available on Linux");
        Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
    }
}

/// tokio's clock, for tests on a paused runtime.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

#[cfg(test)]
impl TokioClock {
    pub fn new() -> Self {
        Self { origin: tokio::time::Instant::now() }
    }
}

#[cfg(test)]
impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
impl Clock for TokioClock {
    fn now(&self) -> Duration {
        tokio::time::Instant::now() - self.origin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_advances() {
        let c = BootClock;
        let a = c.now();
        std::thread::sleep(Duration::from_millis(5));
        let b = c.now();
        assert!(b >= a + Duration::from_millis(5), "{a:?} -> {b:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = TokioClock::new();
        assert_eq!(c.now(), Duration::ZERO);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(c.now(), Duration::from_secs(3));
    }
}
