//! Reading locks from ZooKeeper for `status`: one lock's children and their data (in
//! batches), and the recursive walk (a level at a time, pipelined).

use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use zookeeper_client::{Client, MultiReadResult, Stat};

use super::model::LockReport;
use super::PIPELINE;
use crate::queue::classify;

/// Reads per multi-read request, well below the server's default 1 MiB packet limit.
const READ_BATCH: usize = 500;

/// `--recursive` stops after visiting this many nodes.
const MAX_VISITED: usize = 100_000;

/// A node of a lock directory as read: its data (`None` when its ACL does not let us read
/// it) and its stat.
pub type ReadNode = (Option<Vec<u8>>, Stat);

/// Data and stat of each path, in batches; `None` where the node vanished meanwhile. A node we
/// may not read still has a stat (exists needs no permission), read in one pipelined round.
pub(super) async fn read_all(client: &Client, paths: &[String]) -> Result<Vec<Option<ReadNode>>> {
    let mut out = Vec::with_capacity(paths.len());
    let mut unreadable = Vec::new();
    for batch in paths.chunks(READ_BATCH) {
        let results = crate::zk::retry(client, || {
            let mut reader = client.new_multi_reader();
            for p in batch {
                reader.add_get_data(p).expect("valid child path");
            }
            reader.commit()
        })
        .await
        .context("cannot read the lock nodes")?;
        for r in results {
            out.push(match r {
                MultiReadResult::Data { data, stat } => Some((Some(data), stat)),
                MultiReadResult::Error { err: zookeeper_client::Error::NoAuth } => {
                    unreadable.push(out.len());
                    None
                }
                _ => None,
            });
        }
    }
    let stats = futures::future::join_all(unreadable.iter().map(|&i| client.check_stat(&paths[i]))).await;
    for (i, stat) in unreadable.into_iter().zip(stats) {
        out[i] = stat.context("cannot read the lock nodes")?.map(|stat| (None, stat));
    }
    Ok(out)
}

/// A request refused with NoAuth; `status` turns it into a message naming the ACL.
#[derive(Debug, thiserror::Error)]
#[error("not authorised to {doing}")]
pub(super) struct NoAuthOn {
    pub path: String,
    pub doing: String,
}

pub(super) fn no_auth_on(path: &str, doing: &str) -> anyhow::Error {
    NoAuthOn { path: path.to_owned(), doing: format!("{doing} {path}") }.into()
}

/// Reads one lock: its queue in order, with each node's data.
pub async fn inspect(client: &Client, path: &str, now: SystemTime) -> Result<LockReport> {
    let children = match crate::zk::retry(client, || client.list_children(path)).await {
        Ok(c) => c,
        Err(zookeeper_client::Error::NoNode) => return Ok(LockReport::missing(path)),
        Err(zookeeper_client::Error::NoAuth) => return Err(no_auth_on(path, "list")),
        Err(e) => return Err(e).with_context(|| format!("cannot list {path}")),
    };
    read_lock(client, path, children, now).await
}

/// The report of the lock at `path` whose children are `children`: their data read in batches.
pub async fn read_lock(client: &Client, path: &str, children: Vec<String>, now: SystemTime) -> Result<LockReport> {
    let paths: Vec<String> = children.iter().map(|c| format!("{path}/{c}")).collect();
    let nodes = read_all(client, &paths).await?;
    Ok(LockReport::from_nodes(path, children.into_iter().zip(nodes).collect(), now))
}

/// A node's children and stat, or why not.
type Listed = Result<(Vec<String>, Stat), zookeeper_client::Error>;

/// Every lock below `root`: nodes with lock-node children, and free lock directories — empty
/// nodes that once had children, with no data or zklock's record of clean releases (the server hides the container flag from clients,
/// so this is how a lock directory whose last holder left looks until the server reaps it).
/// Lock directories are not descended into. `None` when `root` itself does not exist.
pub async fn find_locks(client: &Client, root: &str) -> Result<Option<Vec<String>>> {
    use futures::stream::{self, StreamExt};
    let mut found = Vec::new();
    let mut level = vec![root.to_owned()];
    let mut visited = 0;
    // Emptied nodes with data: lock directories if the data is zklock's release record.
    let mut recorded = Vec::new();
    // Breadth first, a level at a time, with up to PIPELINE listings in flight: memory is
    // bounded by one level's paths, and the walk costs about one round trip per level.
    while !level.is_empty() {
        visited += level.len();
        if visited > MAX_VISITED {
            bail!("more than {MAX_VISITED} nodes below {root}; name a narrower path");
        }
        let listed: Vec<(String, Listed)> = stream::iter(level)
            .map(|path| async move {
                let r = crate::zk::retry(client, || client.get_children(&path)).await;
                (path, r)
            })
            .buffered(PIPELINE)
            .collect()
            .await;
        let mut next = Vec::new();
        for (path, r) in listed {
            let (mut children, stat) = match r {
                Ok(r) => r,
                Err(zookeeper_client::Error::NoNode) if path != root => continue,
                Err(zookeeper_client::Error::NoNode) => return Ok(None),
                Err(zookeeper_client::Error::NoAuth) => return Err(no_auth_on(&path, "list")),
                Err(e) => return Err(e).with_context(|| format!("cannot list {path}")),
            };
            let emptied = children.is_empty() && stat.cversion > 0 && path != root;
            if children.iter().any(|c| classify(c).is_some()) || (emptied && stat.data_length == 0) {
                found.push(path);
                continue;
            }
            if emptied {
                // Its data may be the record of zklock's clean releases (see delay.rs).
                recorded.push(path);
                continue;
            }
            children.sort();
            for child in children {
                let child_path = if path == "/" { format!("/{child}") } else { format!("{path}/{child}") };
                if child_path != "/zookeeper" {
                    next.push(child_path);
                }
            }
        }
        level = next;
    }
    let records: Vec<(String, bool)> = stream::iter(recorded)
        .map(|path| async move {
            let r = crate::zk::retry(client, || client.get_data(&path)).await;
            let is_lock = r.is_ok_and(|(data, _)| crate::delay::Released::parse_strict(&data).is_some());
            (path, is_lock)
        })
        .buffered(PIPELINE)
        .collect()
        .await;
    found.extend(records.into_iter().filter(|(_, is_lock)| *is_lock).map(|(path, _)| path));
    found.sort();
    Ok(Some(found))
}
