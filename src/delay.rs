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

/// The lock directory's data: the latest cleanly released node names, oldest first, and of
/// those the latest that ran their command (held the lock) before releasing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    #[serde(rename = "zklock_released")]
    names: Vec<String>,
    #[serde(rename = "zklock_held", default)]
    held: Vec<String>,
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

    /// Whether `name` was released cleanly after running its command.
    pub fn held(&self, name: &str) -> bool {
        self.held.iter().any(|n| n == name)
    }

    /// The record with `name` added (the oldest dropped beyond [`KEPT`]), as bytes; `held`:
    /// it ran its command.
    pub fn with(&self, name: &str, held: bool) -> Vec<u8> {
        fn add(list: &[String], name: &str) -> Vec<String> {
            let mut names: Vec<String> = list.iter().filter(|n| *n != name).cloned().collect();
            names.push(name.to_owned());
            names.split_off(names.len().saturating_sub(KEPT))
        }
        let held = if held { add(&self.held, name) } else { self.held.clone() };
        serde_json::to_vec(&Released { names: add(&self.names, name), held }).expect("the record serializes")
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
/// any node in `gone` (ahead of it before, gone now) demands, counting only those that
/// - were not released cleanly,
/// - could have held when they vanished ([`could_have_held`] in the queue `now`), and
/// - were not followed by a node they shut out that ran its command and released cleanly
///   (it held after them, and waited out whatever they demanded).
///
/// `known` holds what the contender read of nodes' data; `own` is its own `--lock-delay`,
/// assumed for a node it knows nothing of.
pub fn due(
    gone: &[Contender],
    now: &[Contender],
    released: &Released,
    known: &HashMap<String, NodeDelay>,
    own: Duration,
) -> Option<(Duration, String)> {
    let settlers: Vec<&Contender> = gone.iter().filter(|g| released.held(&g.name)).collect();
    let settled =
        |g: &Contender| settlers.iter().any(|x| x.seq > g.seq && !could_have_held(std::slice::from_ref(g), x));
    gone.iter()
        .filter(|g| !released.contains(&g.name))
        .filter(|g| could_have_held(now, g))
        .filter(|g| !settled(g))
        .map(|g| {
            let name = &g.name;
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

    #[test]
    fn record_round_trip_keeps_the_latest_names() {
        let mut r = Released::parse(b"");
        assert!(!r.contains("a"));
        for i in 0..40 {
            r = Released::parse(&r.with(&format!("n{i}"), i % 2 == 0));
        }
        assert!(r.contains("n39") && r.contains("n8"));
        assert!(!r.contains("n7"), "only the latest {KEPT} are kept");
        assert!(r.held("n38") && !r.held("n39"));
        // A name released twice (a retried multi) stands once.
        let again = Released::parse(&r.with("n39", false));
        assert_eq!(again, r);
        // Foreign data (Curator writes an address) counts as no record.
        assert_eq!(Released::parse(b"10.0.0.7"), Released::default());
        assert_eq!(Released::parse_strict(b"10.0.0.7"), None);
        let text = String::from_utf8(Released::default().with("x", true)).unwrap();
        assert_eq!(text, r#"{"zklock_released":["x"],"zklock_held":["x"]}"#);
        // A record of an earlier build (no held list) still reads.
        assert!(Released::parse(br#"{"zklock_released":["y"]}"#).contains("y"));
    }

    /// Exclusive nodes named `<name>`, with sequence numbers in the order given.
    fn excl(names: &[&str]) -> Vec<Contender> {
        names.iter().enumerate().map(|(i, n)| node(&format!("_c_{n}-lock-{:010}", i + 1))).collect()
    }

    #[test]
    fn only_a_vanished_node_demands_a_delay_and_the_longest_wins() {
        let all = excl(&["clean", "short", "long", "curator", "old", "off", "unread"]);
        let by = |n: &str| all.iter().find(|c| c.name.contains(&format!("_{n}-"))).unwrap().clone();
        let released = Released::parse(&Released::default().with(&by("clean").name, false));
        let mut known = HashMap::new();
        for (n, d) in [
            ("clean", NodeDelay::Zklock(s(30))),
            ("short", NodeDelay::Zklock(s(2))),
            ("long", NodeDelay::Zklock(s(9))),
            ("curator", NodeDelay::Foreign),
            ("old", NodeDelay::Unstated),
            ("off", NodeDelay::Zklock(Duration::ZERO)),
        ] {
            known.insert(by(n).name, d);
        }
        let own = s(5);
        let due_for = |names: &[&str]| {
            let gone: Vec<Contender> = names.iter().map(|n| by(n)).collect();
            due(&gone, &[], &released, &known, own).map(|(d, name)| (d, name.split('-').next().unwrap().to_owned()))
        };
        assert_eq!(due_for(&[]), None, "nothing vanished");
        assert_eq!(due_for(&["clean"]), None, "a clean release costs nothing");
        assert_eq!(due_for(&["short"]), Some((s(2), "_c_short".into())), "its own value");
        assert_eq!(due_for(&["short", "long", "clean"]), Some((s(9), "_c_long".into())));
        assert_eq!(due_for(&["curator"]), None, "foreign nodes promise nothing");
        assert_eq!(due_for(&["old"]), Some((s(5), "_c_old".into())));
        assert_eq!(due_for(&["unread"]), Some((s(5), "_c_unread".into())));
        assert_eq!(due_for(&["off"]), None, "--lock-delay 0s demands none");
    }

    #[test]
    fn a_later_holder_that_released_cleanly_settles_those_it_waited_for() {
        let own = s(5);
        let known = HashMap::new();
        // A long queue drained while we waited: the last holder ran after all the others and
        // released cleanly; names older than the record keeps are settled by it.
        let queue: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
        let gone = excl(&queue.iter().map(String::as_str).collect::<Vec<_>>());
        let released = Released::parse(&Released::default().with(&gone[99].name, true));
        assert_eq!(due(&gone, &[], &released, &known, own), None);
        // Released cleanly without running (gave up): it settles nothing.
        let released = Released::parse(&Released::default().with(&gone[99].name, false));
        assert!(due(&gone, &[], &released, &known, own).is_some());
        // Readers do not shut each other out: a reader that held does not settle another.
        let (r1, r2) = (node("_c_a-__READ__0000000001"), node("_c_b-__READ__0000000002"));
        let released = Released::parse(&Released::default().with(&r2.name, true));
        assert_eq!(due(&[r1.clone(), r2.clone()], &[], &released, &known, own).map(|(_, n)| n), Some(r1.name.clone()));
        // A writer that held after a reader settles it.
        let w = node("_c_c-__WRIT__0000000003");
        let released = Released::parse(&Released::default().with(&w.name, true));
        assert_eq!(due(&[r1, w], &[], &released, &known, own), None);
    }
}
