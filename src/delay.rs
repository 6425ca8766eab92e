//! The lock-delay (Chubby's): after a holder vanished without a clean release, the contender
//! granted the lock next waits before it starts its command, so that a holder frozen whole
//! (VM pause, cgroup freeze, swap storm) for less than the session timeout plus the delay is
//! killed on waking before the next command starts.
//!
//! How a clean release is told from a vanishing, in ZooKeeper itself: zklock releases with one
//! multi that deletes its node *and* adds the node's name to the [`Released`] record in the
//! lock directory's data (a conditional `setData`, so that concurrent releases never lose each
//! other's names). A session expiry or an operator's delete removes the node and writes
//! nothing. A contender that proceeds checks every node that stood ahead of it (and could
//! exclude it) in its previous listing and is gone now: one that is not in the record vanished.
//!
//! What each vanished node demands is its own value ([`NodeDelay`]), from the node data it
//! wrote; a contender that never read that node's data assumes its own `--lock-delay`. Curator's
//! and kazoo's nodes promise nothing (they run no guard and honour no delay): they demand none.
//! Pure functions, no I/O.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::queue::{verdict, Contender, Verdict};

/// How many cleanly released names the record keeps: a contender checks names that vanished
/// since its previous listing, so only a burst of more releases than this between two of its
/// listings could push a clean name out (and then it waits a delay it did not need to).
pub const KEPT: usize = 32;

/// The lock directory's data: the latest cleanly released node names, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    #[serde(rename = "zklock_released")]
    names: Vec<String>,
}

impl Released {
    /// The record in a lock directory's data; empty for anything else (no data, or a foreign
    /// client's), which a release then replaces.
    pub fn parse(data: &[u8]) -> Released {
        Released::parse_strict(data).unwrap_or_default()
    }

    /// `None` unless `data` is a record.
    pub fn parse_strict(data: &[u8]) -> Option<Released> {
        serde_json::from_slice(data).ok()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// The record with `name` added (the oldest dropped beyond [`KEPT`]), as bytes.
    pub fn with(&self, name: &str) -> Vec<u8> {
        let mut names: Vec<&str> = self.names.iter().map(String::as_str).filter(|n| *n != name).collect();
        names.push(name);
        let skip = names.len().saturating_sub(KEPT);
        let kept = Released { names: names[skip..].iter().map(|s| s.to_string()).collect() };
        serde_json::to_vec(&kept).expect("the record serializes")
    }
}

/// What a node that vanished demands of its successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeDelay {
    /// A zklock node: its holder's `--lock-delay`.
    Zklock(Duration),
    /// A zklock node of a version that stored no value: the successor's own.
    Unstated,
    /// A Curator or kazoo node: none.
    Foreign,
}

/// Whether `gone`, a node that stood in the queue before and is gone now, could have held the
/// lock when it vanished. Not if a node still in the queue (`now`) stood ahead of it and shuts
/// it out: that node existed all the while `gone` did, so `gone` only ever waited (a waiter
/// whose session expired while it waited demands no delay). More nodes ahead only shut out
/// more, so judging by the ones still here is safe.
pub fn could_have_held(now: &[Contender], gone: &Contender) -> bool {
    let mut queue: Vec<Contender> = now.iter().filter(|c| c.seq < gone.seq).cloned().collect();
    queue.push(gone.clone());
    !matches!(verdict(&queue, queue.len() - 1), Ok(Verdict::Wait { .. }))
}

/// The delay a contender that proceeds must wait, and the node that demands it: the longest
/// any node in `gone` (ahead of it before, gone now, not cleanly released) demands. `known`
/// holds what the contender read of nodes' data; `own` is its own `--lock-delay`, assumed for
/// a node it knows nothing of.
pub fn due(
    gone: &[String],
    released: &Released,
    known: &HashMap<String, NodeDelay>,
    own: Duration,
) -> Option<(Duration, String)> {
    gone.iter()
        .filter(|name| !released.contains(name))
        .map(|name| {
            let d = match known.get(name.as_str()) {
                Some(NodeDelay::Zklock(d)) => *d,
                Some(NodeDelay::Foreign) => Duration::ZERO,
                Some(NodeDelay::Unstated) | None => own,
            };
            (d, name.clone())
        })
        .filter(|(d, _)| !d.is_zero())
        .max_by_key(|(d, _)| *d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::classify;

    fn node(name: &str) -> Contender {
        classify(name).unwrap()
    }

    #[test]
    fn a_node_shut_out_by_one_still_here_never_held() {
        let (reader, writer, next) =
            (node("_c_a-__READ__0000000001"), node("_c_b-__WRIT__0000000002"), node("_c_c-__READ__0000000003"));
        // The writer behind a reader that still holds only waited.
        assert!(!could_have_held(&[reader.clone(), next.clone()], &writer));
        // With the reader gone too, it may have held between the two.
        assert!(could_have_held(std::slice::from_ref(&next), &writer));
        // A reader ahead of another is never shut out by it.
        assert!(could_have_held(std::slice::from_ref(&next), &reader));
        let (h, w1, w2) = (node("_c_a-lock-0000000001"), node("_c_b-lock-0000000002"), node("_c_c-lock-0000000003"));
        assert!(!could_have_held(&[h.clone(), w2.clone()], &w1), "behind the holder: a waiter");
        assert!(could_have_held(std::slice::from_ref(&w2), &w1));
        assert!(could_have_held(&[w2], &h));
        // --limit 2: the second node of a semaphore holds beside the first.
        let (l1, l2, l3) = (
            node("_c_a-__LIMIT_2__0000000001"),
            node("_c_b-__LIMIT_2__0000000002"),
            node("_c_c-__LIMIT_2__0000000003"),
        );
        assert!(could_have_held(&[l1.clone(), l3.clone()], &l2));
        let l4 = node("_c_d-__LIMIT_2__0000000004");
        assert!(!could_have_held(&[l1, l2, l4], &l3), "third of --limit 2 behind two still here");
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn record_round_trip_keeps_the_latest_names() {
        let mut r = Released::parse(b"");
        assert!(!r.contains("a"));
        for i in 0..40 {
            r = Released::parse(&r.with(&format!("n{i}")));
        }
        assert!(r.contains("n39") && r.contains("n8"));
        assert!(!r.contains("n7"), "only the latest {KEPT} are kept");
        // A name released twice (a retried multi) stands once.
        let again = Released::parse(&r.with("n39"));
        assert_eq!(again, r);
        // Foreign data (Curator writes an address) counts as no record.
        assert_eq!(Released::parse(b"10.0.0.7"), Released::default());
        assert_eq!(Released::parse_strict(b"10.0.0.7"), None);
        let text = String::from_utf8(Released::default().with("x")).unwrap();
        assert_eq!(text, r#"{"zklock_released":["x"]}"#);
    }

    #[test]
    fn only_a_vanished_node_demands_a_delay_and_the_longest_wins() {
        let released = Released::parse(&Released::default().with("clean"));
        let mut known = HashMap::new();
        known.insert("clean".to_string(), NodeDelay::Zklock(s(30)));
        known.insert("short".to_string(), NodeDelay::Zklock(s(2)));
        known.insert("long".to_string(), NodeDelay::Zklock(s(9)));
        known.insert("curator".to_string(), NodeDelay::Foreign);
        known.insert("old".to_string(), NodeDelay::Unstated);
        known.insert("off".to_string(), NodeDelay::Zklock(Duration::ZERO));
        let own = s(5);
        assert_eq!(due(&[], &released, &known, own), None, "nothing vanished");
        assert_eq!(due(&names(&["clean"]), &released, &known, own), None, "a clean release costs nothing");
        assert_eq!(due(&names(&["short"]), &released, &known, own), Some((s(2), "short".into())), "its own value");
        assert_eq!(due(&names(&["short", "long", "clean"]), &released, &known, own), Some((s(9), "long".into())));
        assert_eq!(due(&names(&["curator"]), &released, &known, own), None, "foreign nodes promise nothing");
        assert_eq!(due(&names(&["old"]), &released, &known, own), Some((s(5), "old".into())));
        assert_eq!(due(&names(&["unread"]), &released, &known, own), Some((s(5), "unread".into())));
        assert_eq!(due(&names(&["off"]), &released, &known, own), None, "--lock-delay 0s demands none");
    }
}
