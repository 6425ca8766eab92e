//! The catchable signals zklock receives: forwarded to the command's group while it runs;
//! HUP, INT, QUIT and TERM end the wait for the lock before that.

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

/// Signals forwarded to the command's group, in the order they are polled.
pub const FORWARDED: [Signal; 7] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

pub struct Signals {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
    /// SIGTSTP and SIGCONT, caught from just before the command starts until it ends.
    pub job_control: Option<JobControl>,
}

impl Signals {
    /// Installs handlers for every forwarded signal. Must run inside the runtime.
    pub fn install() -> std::io::Result<Signals> {
        let streams = FORWARDED
            .iter()
            .map(|&sig| Ok((sig, signal(SignalKind::from_raw(sig as i32))?)))
            .collect::<std::io::Result<_>>()?;
        Ok(Signals { streams, job_control: None })
    }

    /// No signals at all (tests).
    #[cfg(test)]
    pub fn none() -> Signals {
        Signals { streams: Vec::new(), job_control: None }
    }

    /// The next signal received (cancel-safe).
    pub async fn recv(&mut self) -> Signal {
        std::future::poll_fn(|cx| {
            for (sig, stream) in &mut self.streams {
                if stream.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(*sig);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// The next signal that should end a wait for the lock; others are ignored meanwhile.
    pub async fn recv_terminating(&mut self) -> Signal {
        loop {
            let sig = self.recv().await;
            if is_terminating(sig) {
                return sig;
            }
            tracing::debug!("ignoring {sig} while waiting for the lock");
        }
    }
}

/// Whether a signal ends the wait for the lock.
pub fn is_terminating(sig: Signal) -> bool {
    matches!(sig, Signal::SIGHUP | Signal::SIGINT | Signal::SIGQUIT | Signal::SIGTERM)
}

/// Job control: SIGTSTP and SIGCONT, caught from before the command starts, so that a Ctrl-Z
/// arriving as it starts is not left to the default action (zklock stopped, the command not).
pub struct JobControl {
    pub tstp: Option<tokio::signal::unix::Signal>,
    pub cont: Option<tokio::signal::unix::Signal>,
}

impl JobControl {
    /// Must run inside the runtime.
    pub fn install() -> JobControl {
        JobControl {
            tstp: signal(SignalKind::from_raw(Signal::SIGTSTP as i32)).ok(),
            cont: signal(SignalKind::from_raw(Signal::SIGCONT as i32)).ok(),
        }
    }

    /// No job control (tests).
    #[cfg(test)]
    pub fn none() -> JobControl {
        JobControl { tstp: None, cont: None }
    }
}
