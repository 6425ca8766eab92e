//! Messages on stderr, prefixed `zklock: `. Quiet by default (warnings and errors, for cron
//! mail), `-v` for lifecycle events, `-vv` for debugging, `-q` for errors only. When stderr is
//! not a terminal (cron mail, a CI log, a file), each line carries the time it was logged,
//! RFC 3339 with milliseconds: `zklock: 2026-12-03T02:00:00.123Z acquired ...`.
//! `ZKLOCK_LOG` (tracing target syntax, e.g. `zklock=debug,zookeeper_client=info`) overrides.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

struct Prefixed {
    /// Stamp each line with the time (stderr is not a terminal).
    stamped: bool,
}

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            Level::INFO => "",
            Level::DEBUG => "debug: ",
            Level::TRACE => "trace: ",
        };
        write!(w, "zklock: ")?;
        if self.stamped {
            write!(w, "{} ", humantime::format_rfc3339_millis(std::time::SystemTime::now()))?;
        }
        write!(w, "{level}")?;
        if !event.metadata().target().starts_with("zklock") {
            write!(w, "[{}] ", event.metadata().target())?;
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// The stderr writer, started on the first line that passes the filter: quiet by default,
/// most runs log nothing and never start its thread.
#[derive(Default)]
struct Lazy {
    writer: OnceLock<NonBlocking>,
    guard: Mutex<Option<WorkerGuard>>,
}

impl Lazy {
    fn writer(&self) -> &NonBlocking {
        self.writer.get_or_init(|| {
            // A small buffer: the default (128k lines) costs megabytes and milliseconds at
            // start-up, and zklock says little.
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .buffered_lines_limit(256)
                .lossy(true)
                .thread_name("zklock-log")
                .finish(std::io::stderr());
            *self.guard.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
            writer
        })
    }
}

/// Keep until exit: dropped, it writes out the lines still queued (if any were logged).
pub struct Guard(Arc<Lazy>);

impl Drop for Guard {
    fn drop(&mut self) {
        drop(self.0.guard.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

struct LazyWriter(Arc<Lazy>);

impl<'a> MakeWriter<'a> for LazyWriter {
    type Writer = NonBlocking;

    fn make_writer(&'a self) -> NonBlocking {
        self.0.writer().clone()
    }
}

/// Sets up logging; keep the returned guard until exit, so that pending lines are written.
///
/// Lines go to stderr through a lossy, non-blocking writer thread: a stderr nobody reads (a
/// full pipe) must never stall zklock, whose single runtime thread also runs the session and
/// the watchdog. The thread starts with the first line.
pub fn init(verbose: u8, quiet: bool) -> Guard {
    let (ours, theirs) = match (quiet, verbose) {
        (true, _) => (LevelFilter::ERROR, LevelFilter::OFF),
        (false, 0) => (LevelFilter::WARN, LevelFilter::ERROR),
        (false, 1) => (LevelFilter::INFO, LevelFilter::WARN),
        (false, 2) => (LevelFilter::DEBUG, LevelFilter::INFO),
        (false, _) => (LevelFilter::TRACE, LevelFilter::TRACE),
    };
    let filter = std::env::var("ZKLOCK_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_target("zklock", ours).with_default(theirs));
    let lazy = Arc::new(Lazy::default());
    use std::io::IsTerminal;
    let format = Prefixed { stamped: !std::io::stderr().is_terminal() };
    let layer = tracing_subscriber::fmt::layer().with_writer(LazyWriter(lazy.clone())).event_format(format);
    tracing_subscriber::registry().with(layer.with_filter(filter)).init();
    Guard(lazy)
}
