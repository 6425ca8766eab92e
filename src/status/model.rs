//! The report model: what `zklock status` knows of a lock, built only through the queue rule
//! (`queue::order`, `queue::holders`), from the nodes as they were read. Pure: no I/O.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::read::ReadNode;
use crate::nodedata::NodeData;
use crate::queue;

/// The whole `--json` document.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Format version of this document.
    pub zklock_status: u32,
    /// When the report was made (RFC 3339, UTC).
    pub generated_at: String,
    pub locks: Vec<LockReport>,
}

/// One lock.
#[derive(Debug, Serialize)]
pub struct LockReport {
    pub path: String,
    /// False when the lock path does not exist (the lock is then free).
    pub exists: bool,
    pub held: bool,
    /// `--limit N` of a semaphore path, else null.
    pub limit: Option<u32>,
    /// The first holder (of several, for shared and limited locks).
    pub holder: Option<Contender>,
    /// Every holder, in queue order.
    pub holders: Vec<Contender>,
    /// In queue order: the first is next.
    pub waiters: Vec<Contender>,
    /// Children that take no part in any known lock recipe.
    pub other_nodes: Vec<OtherNode>,
}

/// A holder or waiter.
#[derive(Clone, Debug, Serialize)]
pub struct Contender {
    pub node: String,
    /// `zklock`, `zklock-read`, `zklock-write`, `zklock-limit`, `curator`, `curator-read`,
    /// `curator-write`, `kazoo` or `kazoo-read`.
    pub kind: &'static str,
    pub sequence: i64,
    /// Place in the queue: 0 for the first, ...
    pub position: usize,
    /// Whether it holds the lock (by the queue rule of its kind).
    pub holding: bool,
    /// A holder that waits out its predecessor's lock-delay before starting its command
    /// (the predecessor vanished without a clean release): until when, RFC 3339; else null.
    pub delayed_until: Option<String>,
    /// Seconds of that lock-delay left; null when not delayed.
    pub delay_seconds_left: Option<f64>,
    pub session_id: String,
    pub fencing_token: i64,
    /// When the node was created, i.e. joined the queue.
    pub joined_at: String,
    pub joined_seconds_ago: f64,
    /// Holder: when it acquired the lock (for nodes not written by zklock: when it joined).
    /// Waiter: when it joined.
    pub since: String,
    pub seconds: f64,
    pub host: Option<String>,
    pub pid: Option<u32>,
    pub user: Option<String>,
    pub label: Option<String>,
    pub command: Option<String>,
    pub zklock_version: Option<String>,
    /// Raw data, summarised, for nodes not written by zklock.
    pub data: Option<String>,
}

/// A child of the lock directory that is not a lock node.
#[derive(Debug, Serialize)]
pub struct OtherNode {
    pub node: String,
    /// Hex session id for an ephemeral node, null for a persistent one.
    pub session_id: Option<String>,
    pub data: String,
}

pub(super) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub(super) fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

pub(super) fn seconds_between(earlier: SystemTime, now: SystemTime) -> f64 {
    let s = now.duration_since(earlier).unwrap_or_default().as_secs_f64();
    (s * 1000.0).round() / 1000.0
}

/// A short, printable summary of a node's raw data.
pub fn summarize(data: &[u8]) -> String {
    const MAX: usize = 60;
    if data.is_empty() {
        return "(empty)".into();
    }
    match std::str::from_utf8(data) {
        Ok(text) if !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
            let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if one_line.chars().count() > MAX {
                format!("{:?}… ({} bytes)", one_line.chars().take(MAX).collect::<String>(), data.len())
            } else {
                format!("{one_line:?}")
            }
        }
        _ => format!("({} bytes of binary data)", data.len()),
    }
}

/// [`summarize`], or what stands for data our ACL does not let us read.
pub(super) fn summarize_read(data: Option<&[u8]>) -> String {
    data.map_or_else(|| "(not readable: ACL)".into(), summarize)
}

impl LockReport {
    /// A lock path that does not exist: free.
    pub fn missing(path: &str) -> LockReport {
        LockReport {
            path: path.into(),
            exists: false,
            held: false,
            limit: None,
            holder: None,
            holders: vec![],
            waiters: vec![],
            other_nodes: vec![],
        }
    }

    /// The report of the lock at `path` from its children as read (`None`: gone meanwhile),
    /// in the queue's order, with holders as the queue rule says, at `now`.
    pub fn from_nodes(path: &str, nodes: Vec<(String, Option<ReadNode>)>, now: SystemTime) -> LockReport {
        let names: Vec<String> = nodes.iter().filter(|(_, n)| n.is_some()).map(|(name, _)| name.clone()).collect();
        let mut read: HashMap<String, ReadNode> = nodes.into_iter().filter_map(|(n, r)| Some((n, r?))).collect();
        let (order, unknown) = queue::order(&names);
        let mut other_nodes: Vec<OtherNode> = unknown
            .into_iter()
            .filter_map(|name| {
                let (data, stat) = read.remove(&name)?;
                Some(OtherNode {
                    node: name,
                    session_id: (stat.ephemeral_owner != 0).then(|| format!("{:#x}", stat.ephemeral_owner)),
                    data: summarize_read(data.as_deref()),
                })
            })
            .collect();
        other_nodes.sort_by(|a, b| a.node.cmp(&b.node));
        let holding = queue::holders(&order);
        let limit = order.iter().find_map(|c| match c.kind {
            queue::NodeKind::Limit(n) => Some(n.get()),
            _ => None,
        });
        let (mut holders, mut waiters) = (Vec::new(), Vec::new());
        for (position, c) in order.into_iter().enumerate() {
            let Some((data, stat)) = read.remove(&c.name) else { continue };
            let contender = Contender::new(c, position, holding.contains(&position), data.as_deref(), &stat, now);
            if contender.holding {
                holders.push(contender);
            } else {
                waiters.push(contender);
            }
        }
        LockReport {
            path: path.into(),
            exists: true,
            held: !holders.is_empty(),
            limit,
            holder: holders.first().cloned(),
            holders,
            waiters,
            other_nodes,
        }
    }
}

impl Contender {
    fn new(
        c: queue::Contender,
        position: usize,
        holds: bool,
        data: Option<&[u8]>,
        stat: &zookeeper_client::Stat,
        now: SystemTime,
    ) -> Contender {
        let doc = data.and_then(NodeData::parse);
        let joined = from_millis(stat.ctime);
        let since = if holds {
            doc.as_ref()
                .and_then(|d| d.acquired_at.as_deref())
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .unwrap_or(joined)
        } else {
            joined
        };
        let delayed_until = doc
            .as_ref()
            .and_then(|d| d.delayed_until.as_deref())
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .filter(|until| holds && *until > now);
        Contender {
            kind: c.kind.name(doc.is_some()),
            node: c.name,
            sequence: c.seq,
            position,
            holding: holds,
            delayed_until: delayed_until.map(rfc3339),
            delay_seconds_left: delayed_until.map(|until| seconds_between(now, until)),
            session_id: format!("{:#x}", stat.ephemeral_owner),
            fencing_token: stat.czxid,
            joined_at: rfc3339(joined),
            joined_seconds_ago: seconds_between(joined, now),
            since: rfc3339(since),
            seconds: seconds_between(since, now),
            data: doc.is_none().then(|| summarize_read(data)),
            host: doc.as_ref().map(|d| d.host.clone()),
            pid: doc.as_ref().map(|d| d.pid),
            user: doc.as_ref().map(|d| d.user.clone()),
            label: doc.as_ref().and_then(|d| d.label.clone()),
            command: doc.as_ref().map(|d| d.command.clone()),
            zklock_version: doc.as_ref().map(|d| d.version.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zookeeper_client::Stat;

    #[test]
    fn summaries_of_raw_data() {
        assert_eq!(summarize(b""), "(empty)");
        assert_eq!(summarize(b"10.0.0.7"), "\"10.0.0.7\"");
        assert_eq!(summarize(b"a\n  b"), "\"a b\"");
        assert_eq!(summarize(&[0, 159, 146, 150]), "(4 bytes of binary data)");
        let long = "x".repeat(100);
        assert_eq!(summarize(long.as_bytes()), format!("{:?}… (100 bytes)", "x".repeat(60)));
    }

    fn stat(owner: i64, czxid: i64) -> Stat {
        Stat {
            czxid,
            mzxid: czxid,
            pzxid: czxid,
            ctime: 0,
            mtime: 0,
            version: 0,
            cversion: 0,
            aversion: 0,
            ephemeral_owner: owner,
            data_length: 0,
            num_children: 0,
        }
    }

    /// The model follows the queue: order by sequence whatever the listing order, holders by
    /// the rule of their kind, foreign names apart, vanished nodes left out.
    #[test]
    fn the_model_is_the_queue_rule() {
        let now = SystemTime::now();
        let node = |name: &str, czxid| (name.to_string(), Some((Some(Vec::new()), stat(7, czxid))));
        let nodes = vec![
            node("_c_b-__READ__0000000003", 3),
            node("notes", 9),
            node("_c_a-__READ__0000000001", 1),
            node("_c_c-__WRIT__0000000002", 2),
            ("_c_d-__READ__0000000004".to_string(), None),
        ];
        let r = LockReport::from_nodes("/l", nodes, now);
        let names = |cs: &[Contender]| cs.iter().map(|c| c.sequence).collect::<Vec<_>>();
        assert_eq!(names(&r.holders), [1], "a reader holds; the writer behind it waits");
        assert_eq!(names(&r.waiters), [2, 3], "the reader behind the writer waits");
        assert_eq!(r.waiters.iter().map(|c| c.position).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(r.other_nodes.len(), 1);
        assert_eq!(r.other_nodes[0].node, "notes");
        assert!(r.held && r.exists);
        assert_eq!(r.holder.as_ref().map(|h| h.fencing_token), Some(1));
    }
}
