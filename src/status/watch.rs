//! `status --watch`: a line whenever a lock's holder or queue changes, driven by ZooKeeper
//! watches (no polling).

use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use zookeeper_client::Client;

use super::model::rfc3339;
use super::read::{inspect, no_auth_on, read_lock};
use super::text::summary_line;
use crate::exit::Exit;

/// Prints the state of each lock, then a line each time its holder or queue changes.
pub(super) async fn watch(client: &Client, paths: &[String], quiet: bool) -> Result<Exit> {
    let mut tasks = tokio::task::JoinSet::new();
    for path in paths {
        let (client, path) = (client.clone(), path.clone());
        tasks.spawn(async move { watch_one(&client, &path, quiet).await });
    }
    // A watch ends only on an error or when stdout is closed; either ends them all.
    if let Some(r) = tasks.join_next().await {
        r.context("watch task failed")??;
    }
    Ok(Exit::Held)
}

pub(super) async fn watch_one(client: &Client, path: &str, quiet: bool) -> Result<()> {
    let mut last: Option<(bool, Vec<(String, bool)>)> = None;
    loop {
        let watched = crate::zk::retry(client, || client.list_and_watch_children(path)).await;
        let (report, watcher) = match watched {
            Ok((children, watcher)) => (read_lock(client, path, children, SystemTime::now()).await?, Some(watcher)),
            Err(zookeeper_client::Error::NoNode) => (inspect(client, path, SystemTime::now()).await?, None),
            Err(zookeeper_client::Error::NoAuth) => return Err(no_auth_on(path, "watch")),
            Err(e) => return Err(e).with_context(|| format!("cannot watch {path}")),
        };
        let key = (
            report.exists,
            report.holders.iter().chain(&report.waiters).map(|c| (c.node.clone(), c.holding)).collect(),
        );
        if last.as_ref() != Some(&key) {
            if !quiet {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let line = format!("{} {}\n", rfc3339(SystemTime::now()), summary_line(&report));
                if out.write_all(line.as_bytes()).and_then(|()| out.flush()).is_err() {
                    // Nobody reads any more (`| head -n 3`): the watch is over.
                    return Ok(());
                }
            }
            last = Some(key);
        }
        let event = match watcher {
            Some(w) => w.changed().await,
            None => match crate::zk::retry(client, || client.check_and_watch_stat(path)).await {
                // Created meanwhile: look again.
                Ok((Some(_), _)) => continue,
                Ok((None, w)) => w.changed().await,
                Err(e) => return Err(e).with_context(|| format!("cannot watch {path}")),
            },
        };
        if event.session_state.is_terminated() {
            bail!("the ZooKeeper session ended ({})", event.session_state);
        }
    }
}
