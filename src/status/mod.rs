//! `zklock status`: who holds a lock, who waits and for how long — as a table for people and
//! as a versioned JSON document for scripts; `--recursive` lists every lock below a path and
//! `--watch` prints a line whenever a holder or queue changes (driven by watches, not polling).
//!
//! - `read`: reading one lock, and the recursive walk;
//! - `model`: the report, built through the queue rule;
//! - `text`, `json`, `prometheus`: one file per output format;
//! - `watch`: `--watch`.

use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use zookeeper_client::Client;

use crate::cli::{Format, StatusArgs};
use crate::exit::Exit;
use crate::lock;
use crate::signals::Signals;

pub mod json;
pub mod model;
pub mod prometheus;
pub mod read;
pub mod text;
mod watch;

use model::{Contender, LockReport};
use read::{find_locks, inspect, NoAuthOn};

/// Requests in flight at once while walking and reading many locks.
pub(crate) const PIPELINE: usize = 64;

fn exit_status(reports: &[LockReport]) -> Exit {
    if !reports.is_empty() && reports.iter().all(|r| r.held) {
        Exit::Held
    } else {
        Exit::Free
    }
}

/// `zklock status`.
pub async fn status(args: StatusArgs, quiet: bool) -> Result<Exit> {
    for path in &args.locks {
        if path != "/" {
            lock::validate_lock_path(path)?;
        }
    }
    if args.recursive && args.locks.len() != 1 {
        bail!("--recursive takes exactly one path");
    }
    // status creates nothing: no ACL to choose.
    let connect = crate::zk::ConnectOptions::from_settings(&args.connect.settings(None))?;
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    let client = tokio::select! {
        c = connect.connect() => c?,
        sig = signals.recv_terminating() => return Ok(Exit::Signal(sig as i32)),
    };
    // Under a chroot that does not exist every lock would look free.
    if !client.path().is_empty() && client.path() != "/" {
        match crate::zk::retry(&client, || client.check_stat("/")).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let chroot = client.path().to_owned();
                crate::zk::close_session(client).await;
                bail!("the chroot {chroot} of the connect string does not exist");
            }
            Err(e) => return Err(e).context("cannot check the chroot of the connect string"),
        }
    }
    let result = if args.watch {
        tokio::select! {
            r = watch::watch(&client, &args.locks, quiet) => r,
            _ = signals.recv_terminating() => Ok(Exit::Held),
        }
    } else {
        snapshot(&client, &args, quiet).await
    };
    let result = match result {
        Err(e) => match e.downcast_ref::<NoAuthOn>() {
            Some(NoAuthOn { path, doing }) => Err(connect.not_authorised(&client, path, doing).await),
            None => Err(e),
        },
        ok => ok,
    };
    crate::zk::close_session(client).await;
    result
}

async fn snapshot(client: &Client, args: &StatusArgs, quiet: bool) -> Result<Exit> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let now = SystemTime::now();
    // With --recursive: whether the root exists, as the walk found it.
    let (paths, root_exists) = if args.recursive {
        match find_locks(client, &args.locks[0]).await? {
            Some(found) => (found, true),
            None => (Vec::new(), false),
        }
    } else {
        (args.locks.clone(), true)
    };
    // Up to PIPELINE locks read at once, in order.
    let reports: Vec<LockReport> =
        stream::iter(paths.iter()).map(|p| inspect(client, p, now)).buffered(PIPELINE).try_collect().await?;
    let alerting = args.held_longer_than.is_some() || args.waiting_longer_than.is_some();
    let (reports, code) = if alerting {
        let matching: Vec<LockReport> = reports.into_iter().filter(|r| matches_alert(r, args)).collect();
        let code = if matching.is_empty() { Exit::Held } else { Exit::Alert };
        (matching, code)
    } else {
        let code = exit_status(&reports);
        (reports, code)
    };
    let text = match args.format() {
        Format::Json => json::render_json(reports, now),
        Format::Prometheus => prometheus::render_prometheus(&reports, now),
        // An alert check prints nothing when nothing matched: cron then mails nothing.
        Format::Text if alerting && reports.is_empty() => String::new(),
        Format::Text if args.recursive && reports.is_empty() => {
            let missing = if root_exists { "" } else { " (no such path)" };
            format!("no locks below {}{missing}\n", args.locks[0])
        }
        Format::Text if args.recursive => text::render_recursive(&reports),
        Format::Text => reports.iter().map(text::render_text).collect::<Vec<_>>().join("\n"),
    };
    match &args.output {
        Some(path) => write_atomically(path, text.as_bytes())?,
        None if !quiet => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        }
        None => {}
    }
    Ok(code)
}

/// Whether a lock matches the alert options given: a holder holding, or a waiter waiting,
/// longer than asked.
fn matches_alert(r: &LockReport, args: &StatusArgs) -> bool {
    let over = |limit: Option<Duration>, cs: &[Contender]| {
        limit.is_some_and(|d| cs.iter().any(|c| c.seconds > d.as_secs_f64()))
    };
    over(args.held_longer_than, &r.holders) || over(args.waiting_longer_than, &r.waiters)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`: a reader
/// (node_exporter's textfile collector) sees the old file or the new one, never half of one.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let name = path.file_name().with_context(|| format!("-o {}: not a file name", path.display()))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_for_scripts() {
        assert_eq!(exit_status(&[]), Exit::Free);
        assert_eq!(exit_status(&[LockReport::missing("/a")]), Exit::Free);
    }
}
