//! The JSON document `zklock run` stores in its lock node, read back by `zklock status`.
//!
//! Version 1:
//! ```json
//! {"zklock":1,"host":"web-3","pid":4242,"user":"deploy","label":"nightly report",
//!  "started_at":"2026-11-24T02:00:00.123Z","version":"0.1.0","command":"report.sh"}
//! ```
//! `acquired_at` (RFC 3339) is added once the holder acquired the lock after waiting.
//! `lock_delay_ms` is the holder's `--lock-delay`: what its successors wait if it vanishes
//! without a clean release. `delayed_until` (RFC 3339) is set while a contender that was granted
//! the lock waits out its predecessor's lock-delay.
//! `command` is the file name of the command only: its arguments may hold secrets and are never
//! stored. `label` is omitted when not given. Readers must ignore fields they do not know.

use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The format version written by this build.
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeData {
    /// Format version of this document.
    pub zklock: u32,
    pub host: String,
    pub pid: u32,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// When the `zklock run` process started, RFC 3339 UTC.
    pub started_at: String,
    /// When the lock was acquired, RFC 3339 UTC; written only by a holder that had to wait
    /// (otherwise the node's creation time is the acquisition time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquired_at: Option<String>,
    /// The lock-delay this holder asks of its successors, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_delay_ms: Option<u64>,
    /// While waiting out a predecessor's lock-delay: until when, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delayed_until: Option<String>,
    /// zklock's version.
    pub version: String,
    /// The command's file name (argv[0] without directories), never its arguments.
    pub command: String,
}

impl NodeData {
    pub fn for_this_process(label: Option<&str>, argv0: &OsStr, started: SystemTime) -> Self {
        let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| nix::unistd::geteuid().to_string());
        let command = Path::new(argv0).file_name().unwrap_or(argv0).to_string_lossy().into_owned();
        NodeData {
            zklock: FORMAT,
            host,
            pid: std::process::id(),
            user,
            label: label.map(str::to_owned),
            started_at: humantime::format_rfc3339_millis(started).to_string(),
            acquired_at: None,
            lock_delay_ms: None,
            delayed_until: None,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            command,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("node data serializes")
    }

    /// What a node with this data demands of its successor if it vanishes.
    pub fn demands(bytes: &[u8]) -> crate::delay::NodeDelay {
        use crate::delay::NodeDelay;
        match NodeData::parse(bytes) {
            Some(d) => d.lock_delay_ms.map_or(NodeDelay::Unstated, |ms| NodeDelay::Zklock(Duration::from_millis(ms))),
            None => NodeDelay::Foreign,
        }
    }

    /// Parses a document written by any zklock; `None` if the bytes are not one.
    pub fn parse(bytes: &[u8]) -> Option<NodeData> {
        serde_json::from_slice::<NodeData>(bytes).ok().filter(|d| d.zklock >= 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn round_trip_and_no_arguments() {
        let started = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let d = NodeData::for_this_process(Some("nightly"), OsStr::new("/usr/local/bin/report.sh"), started);
        assert_eq!(d.command, "report.sh");
        assert_eq!(d.started_at, "2026-11-18T11:06:40.123Z");
        assert_eq!(d.pid, std::process::id());
        let bytes = d.to_bytes();
        assert_eq!(NodeData::parse(&bytes), Some(d));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("{\"zklock\":1,"), "{text}");
    }

    #[test]
    fn label_is_omitted_when_absent_and_unknown_fields_ignored() {
        let d = NodeData::for_this_process(None, OsStr::new("true"), UNIX_EPOCH);
        let text = String::from_utf8(d.to_bytes()).unwrap();
        assert!(!text.contains("label"), "{text}");
        let newer = text.replacen('{', "{\"future_field\":[1,2],", 1);
        assert_eq!(NodeData::parse(newer.as_bytes()), Some(d));
    }

    #[test]
    fn what_a_node_demands() {
        use crate::delay::NodeDelay;
        let mut d = NodeData::for_this_process(None, OsStr::new("true"), UNIX_EPOCH);
        assert_eq!(NodeData::demands(&d.to_bytes()), NodeDelay::Unstated);
        d.lock_delay_ms = Some(4_000);
        assert_eq!(NodeData::demands(&d.to_bytes()), NodeDelay::Zklock(Duration::from_secs(4)));
        assert_eq!(NodeData::demands(b"10.0.0.7"), NodeDelay::Foreign);
    }

    #[test]
    fn foreign_data_is_not_ours() {
        assert_eq!(NodeData::parse(b"10.0.0.7"), None);
        assert_eq!(NodeData::parse(b""), None);
        assert_eq!(NodeData::parse(b"{\"host\":\"x\"}"), None);
    }
}
