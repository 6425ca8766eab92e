//! The queue rule, in one place and without I/O: what a lock directory's children are, in what
//! order they stand, and whether a contender may proceed or whom it must watch. The recipe
//! (`lock`) and `status` both use it.
//!
//! Every recipe that shares a lock directory (zklock, Apache Curator, kazoo) draws sequence
//! numbers from the same parent counter, so the children order against each other. The modes:
//!
//! * exclusive (zklock's default, Curator's `InterProcessMutex` `-lock-`, kazoo's `Lock` and
//!   `WriteLock` `__lock__`) and write (Curator's `InterProcessReadWriteLock` `__WRIT__`, zklock
//!   `--write`): proceed when no node of any kind is ahead; watch the immediate predecessor.
//! * read (Curator `__READ__`, kazoo `ReadLock` `__rlock__`, zklock `--shared`): proceed when no
//!   exclusive or write node is ahead; watch the nearest such node ahead, as Curator's read
//!   lock does (it watches the first one).
//! * limit N (zklock `--limit N`, `__LIMIT_<N>__`): at most N hold; proceed when fewer than N
//!   nodes are ahead. The first waiter watches the directory (a release of any holder must wake
//!   it, and only it); every later waiter watches its predecessor, whose data changes when it
//!   acquires. A limited path takes only limit nodes of the same N; its first node decides.

use std::fmt;
use std::num::NonZeroU32;

/// Curator's protected-name prefix.
pub const PROTECTED_PREFIX: &str = "_c_";
/// Curator's InterProcessMutex node name.
pub const CURATOR_LOCK: &str = "-lock-";
/// Curator's InterProcessReadWriteLock node names.
pub const CURATOR_READ: &str = "__READ__";
pub const CURATOR_WRITE: &str = "__WRIT__";

/// What a contender asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Exclusive,
    Read,
    Write,
    Limit(NonZeroU32),
}

impl Mode {
    /// The node name marker zklock creates for this mode, after `_c_<uuid>`.
    pub fn marker(self) -> String {
        match self {
            Mode::Exclusive => CURATOR_LOCK.into(),
            Mode::Read => format!("-{CURATOR_READ}"),
            Mode::Write => format!("-{CURATOR_WRITE}"),
            Mode::Limit(n) => format!("-__LIMIT_{n}__"),
        }
    }

    /// Whether a holder in this mode excludes every other holder.
    pub fn excludes_all(self) -> bool {
        matches!(self, Mode::Exclusive | Mode::Write)
    }

    pub fn describe(self) -> String {
        match self {
            Mode::Exclusive => "exclusive".into(),
            Mode::Read => "shared (read)".into(),
            Mode::Write => "write".into(),
            Mode::Limit(n) => format!("--limit {n}"),
        }
    }
}

/// The kind of a lock-directory child, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// `_c_<uuid>-lock-<seq>`: zklock or Apache Curator's InterProcessMutex.
    CuratorMutex,
    /// `..__READ__<seq>`: Curator's InterProcessReadWriteLock, read side (and zklock --shared).
    CuratorRead,
    /// `..__WRIT__<seq>`: Curator's InterProcessReadWriteLock, write side (and zklock --write).
    CuratorWrite,
    /// `<uuid hex>__lock__<seq>`: kazoo's Lock / WriteLock.
    KazooLock,
    /// `<uuid hex>__rlock__<seq>`: kazoo's ReadLock.
    KazooRead,
    /// `_c_<uuid>-__LIMIT_<N>__<seq>`: zklock --limit N.
    Limit(NonZeroU32),
}

impl NodeKind {
    pub fn mode(self) -> Mode {
        match self {
            NodeKind::CuratorMutex | NodeKind::KazooLock => Mode::Exclusive,
            NodeKind::CuratorWrite => Mode::Write,
            NodeKind::CuratorRead | NodeKind::KazooRead => Mode::Read,
            NodeKind::Limit(n) => Mode::Limit(n),
        }
    }

    /// The kind's name in `status` (`--json` "kind"); `ours` when the node holds zklock's data.
    pub fn name(self, ours: bool) -> &'static str {
        match self {
            NodeKind::CuratorMutex if ours => "zklock",
            NodeKind::CuratorMutex => "curator",
            NodeKind::CuratorRead if ours => "zklock-read",
            NodeKind::CuratorRead => "curator-read",
            NodeKind::CuratorWrite if ours => "zklock-write",
            NodeKind::CuratorWrite => "curator-write",
            NodeKind::KazooLock => "kazoo",
            NodeKind::KazooRead => "kazoo-read",
            NodeKind::Limit(_) => "zklock-limit",
        }
    }

    pub fn describe(self) -> String {
        match self {
            NodeKind::CuratorMutex => "zklock/Curator mutex".into(),
            NodeKind::CuratorRead => "read lock (Curator/zklock --shared)".into(),
            NodeKind::CuratorWrite => "write lock (Curator/zklock --write)".into(),
            NodeKind::KazooLock => "kazoo lock".into(),
            NodeKind::KazooRead => "kazoo read lock".into(),
            NodeKind::Limit(n) => format!("zklock --limit {n}"),
        }
    }
}

/// A child of the lock directory that takes part in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contender {
    pub name: String,
    pub seq: i64,
    pub kind: NodeKind,
}

/// Classifies a child name by the recipes that share lock directories.
pub fn classify(name: &str) -> Option<Contender> {
    const MARKERS: [(&str, NodeKind); 5] = [
        (CURATOR_LOCK, NodeKind::CuratorMutex),
        (CURATOR_READ, NodeKind::CuratorRead),
        (CURATOR_WRITE, NodeKind::CuratorWrite),
        ("__lock__", NodeKind::KazooLock),
        ("__rlock__", NodeKind::KazooRead),
    ];
    let digits = name.len() - name.bytes().rev().take_while(u8::is_ascii_digit).count();
    let (head, seq) = name.split_at(digits);
    // ZooKeeper's sequence suffix is 10 digits (19 once the 32-bit counter is exceeded).
    if seq.len() != 10 && seq.len() != 19 {
        return None;
    }
    let seq: i64 = seq.parse().ok()?;
    let contender = |kind| Some(Contender { name: name.to_owned(), seq, kind });
    // Curator's unprotected form is a bare "lock-<seq>".
    if head == "lock-" {
        return contender(NodeKind::CuratorMutex);
    }
    if let Some(rest) = head.strip_suffix("__") {
        if let Some((before, n)) = rest.rsplit_once("-__LIMIT_") {
            if !before.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                return contender(NodeKind::Limit(n.parse().ok()?));
            }
        }
    }
    MARKERS
        .iter()
        .find(|(marker, _)| head.ends_with(marker) && head.len() > marker.len())
        .and_then(|&(_, k)| contender(k))
}

/// Orders the children of a lock directory by sequence; the names it cannot classify are
/// returned apart.
pub fn order(children: &[String]) -> (Vec<Contender>, Vec<String>) {
    let mut queue = Vec::with_capacity(children.len());
    let mut unknown = Vec::new();
    for name in children {
        match classify(name) {
            Some(c) => queue.push(c),
            None => unknown.push(name.clone()),
        }
    }
    queue.sort_by_key(|c| c.seq);
    (queue, unknown)
}

/// Whom a waiter watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watch {
    /// This child (its deletion, or its data changing when it acquires).
    Node(String),
    /// The children of the lock directory.
    Directory,
}

/// What a contender must do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It holds the lock.
    Proceed,
    /// It waits; `ahead` counts the nodes that keep it waiting; `next_in_line` says that the
    /// watch firing will likely let it proceed (it then keeps its session confirmed).
    Wait { watch: Watch, next_in_line: bool, ahead: usize },
}

/// A queue that the contender must not join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Holders or waiters use another `--limit`.
    LimitMismatch { ours: NonZeroU32, theirs: NonZeroU32, node: String },
    /// A limited path holds another kind of node, or the reverse.
    Mixed { ours: Mode, node: String, kind: NodeKind },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::LimitMismatch { ours, theirs, node } => write!(
                f,
                "its holders or waiters use --limit {theirs} (node {node}), and this is --limit {ours}: every \
                 participant must give the same limit"
            ),
            Refusal::Mixed { ours: Mode::Limit(n), node, kind } => write!(
                f,
                "it holds a {} node ({node}), and --limit {n} cannot share a path with other kinds of lock",
                kind.describe()
            ),
            Refusal::Mixed { ours: Mode::Exclusive, node, kind: NodeKind::Limit(n) } => {
                write!(f, "it is a --limit {n} semaphore (node {node}): give the same --limit to share it")
            }
            Refusal::Mixed { ours: Mode::Exclusive, node, kind } => write!(
                f,
                "it is a read-write lock ({} node {node}), whose readers ignore zklock's plain exclusive nodes: use \
                 --write (or --shared) on it",
                kind.describe()
            ),
            Refusal::Mixed { ours, node, kind } => write!(
                f,
                "it holds a {} node ({node}), which a {} lock cannot share a path with",
                kind.describe(),
                ours.describe()
            ),
        }
    }
}

/// Why the contender at `ours` must not join this queue, if it must not. The first node of the
/// queue decides whether the path is a `--limit` lock and its N: a contender that does not fit
/// refuses, and one that arrives behind a refusing contender (about to leave) is not misled by
/// it. A plain exclusive contender refuses a read-write lock wherever its nodes stand.
fn refusal(queue: &[Contender], ours: usize) -> Option<Refusal> {
    let me = queue[ours].kind.mode();
    let first = &queue[0];
    let limit = match (me, first.kind) {
        (Mode::Limit(n), NodeKind::Limit(m)) if n != m => {
            Some(Refusal::LimitMismatch { ours: n, theirs: m, node: first.name.clone() })
        }
        (Mode::Limit(_), NodeKind::Limit(_)) => None,
        (Mode::Limit(_), kind) | (_, kind @ NodeKind::Limit(_)) => {
            Some(Refusal::Mixed { ours: me, node: first.name.clone(), kind })
        }
        _ => None,
    };
    // Curator's and kazoo's readers do not see a `-lock-` node: a plain exclusive contender
    // must not join a read-write lock (use --write).
    limit.or_else(|| {
        queue.iter().find_map(|c| match (me, c.kind) {
            (Mode::Exclusive, kind @ (NodeKind::CuratorRead | NodeKind::CuratorWrite | NodeKind::KazooRead)) => {
                Some(Refusal::Mixed { ours: me, node: c.name.clone(), kind })
            }
            _ => None,
        })
    })
}

/// The ordering rule alone, for the contender at `ours`.
fn rule(queue: &[Contender], ours: usize) -> Verdict {
    let wait = |watch, next_in_line, ahead| Verdict::Wait { watch, next_in_line, ahead };
    match queue[ours].kind.mode() {
        Mode::Limit(n) => {
            let n = n.get() as usize;
            match ours {
                p if p < n => Verdict::Proceed,
                p if p == n => wait(Watch::Directory, true, p),
                p => wait(Watch::Node(queue[p - 1].name.clone()), false, p),
            }
        }
        Mode::Exclusive | Mode::Write => match ours {
            0 => Verdict::Proceed,
            p => wait(Watch::Node(queue[p - 1].name.clone()), p == 1, p),
        },
        Mode::Read => {
            let blocking: Vec<&Contender> = queue[..ours].iter().filter(|c| c.kind.mode().excludes_all()).collect();
            match blocking.last() {
                None => Verdict::Proceed,
                Some(nearest) => wait(Watch::Node(nearest.name.clone()), blocking.len() == 1, blocking.len()),
            }
        }
    }
}

/// The queue rule for the contender at `ours` in `queue` (in sequence order, as [`order`] gives
/// it); its mode is its node's.
pub fn verdict(queue: &[Contender], ours: usize) -> Result<Verdict, Refusal> {
    match refusal(queue, ours) {
        Some(r) => Err(r),
        None => Ok(rule(queue, ours)),
    }
}

/// The contenders that hold the lock now: the indices in `queue` that the ordering rule lets
/// proceed (a contender that refused a queue has left it, so refusals do not count here).
pub fn holders(queue: &[Contender]) -> Vec<usize> {
    (0..queue.len()).filter(|&i| rule(queue, i) == Verdict::Proceed).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(kind: NodeKind, seq: i64) -> Contender {
        let name = match kind {
            NodeKind::CuratorMutex => format!("_c_u{seq}-lock-{seq:010}"),
            NodeKind::CuratorRead => format!("_c_u{seq}-__READ__{seq:010}"),
            NodeKind::CuratorWrite => format!("_c_u{seq}-__WRIT__{seq:010}"),
            NodeKind::KazooLock => format!("u{seq}__lock__{seq:010}"),
            NodeKind::KazooRead => format!("u{seq}__rlock__{seq:010}"),
            NodeKind::Limit(n) => format!("_c_u{seq}-__LIMIT_{n}__{seq:010}"),
        };
        let c = classify(&name).unwrap_or_else(|| panic!("{name} does not classify"));
        assert_eq!((c.kind, c.seq), (kind, seq), "{name}");
        c
    }

    fn q(kinds: &[NodeKind]) -> Vec<Contender> {
        kinds.iter().enumerate().map(|(i, &k)| node(k, i as i64 + 1)).collect()
    }

    fn lim(n: u32) -> NodeKind {
        NodeKind::Limit(NonZeroU32::new(n).unwrap())
    }

    use NodeKind::*;

    #[test]
    fn classifies_every_recipe_and_its_sequence() {
        let c = classify("_c_0f8e3f4c-8a1b-4a53-9b0e-2c7f4d1e9a10-lock-0000000007").unwrap();
        assert_eq!((c.kind, c.seq), (CuratorMutex, 7));
        assert_eq!(classify("lock-0000000003").unwrap().kind, CuratorMutex);
        assert_eq!(classify("_c_x-__READ__0000000001").unwrap().kind, CuratorRead);
        assert_eq!(classify("_c_x-__WRIT__0000000001").unwrap().kind, CuratorWrite);
        assert_eq!(classify("3b1f0c2d9e8a4b7c__lock__0000000012").unwrap().kind, KazooLock);
        assert_eq!(classify("ab__rlock__0000000002").unwrap().kind, KazooRead);
        assert_eq!(classify("_c_x-__LIMIT_3__0000000004").unwrap().kind, lim(3));
        assert_eq!(classify("_c_x-lock-0000000000000000009").unwrap().seq, 9);
        for name in [
            "config",
            "lock",
            "lock-12",
            "__lock__0000000001",
            "_c_x-lock-00000000a1",
            "leader-0000000001",
            "-lock-",
            "_c_x-__LIMIT_0__0000000001",
            "_c_x-__LIMIT___0000000001",
            "-__LIMIT_2__0000000001",
        ] {
            assert_eq!(classify(name), None, "{name}");
        }
        for mode in [Mode::Exclusive, Mode::Read, Mode::Write, Mode::Limit(NonZeroU32::new(7).unwrap())] {
            let name = format!("{PROTECTED_PREFIX}some-uuid{}0000000042", mode.marker());
            assert_eq!(classify(&name).map(|c| (c.kind.mode(), c.seq)), Some((mode, 42)), "{name}");
        }
    }

    #[test]
    fn order_sorts_mixed_recipes_by_sequence_and_sets_unknown_names_apart() {
        let children: Vec<String> = [
            "_c_b-lock-0000000005",
            "aa__lock__0000000002",
            "notes.txt",
            "_c_a-lock-0000000009",
            "_c_c-__READ__0000000001",
        ]
        .map(String::from)
        .to_vec();
        let (queue, unknown) = order(&children);
        assert_eq!(queue.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 5, 9]);
        assert_eq!(unknown, ["notes.txt"]);
    }

    fn watch_of(v: &Verdict) -> Option<&Watch> {
        match v {
            Verdict::Proceed => None,
            Verdict::Wait { watch, .. } => Some(watch),
        }
    }

    #[test]
    fn exclusive_kinds_wait_for_everything_ahead_and_watch_the_predecessor() {
        // zklock, Curator mutex and kazoo locks in one queue: one holder, a chain of watches.
        let queue = q(&[KazooLock, CuratorMutex, KazooLock, CuratorMutex]);
        assert_eq!(verdict(&queue, 0), Ok(Verdict::Proceed));
        for i in 1..queue.len() {
            let v = verdict(&queue, i).unwrap();
            assert_eq!(
                v,
                Verdict::Wait { watch: Watch::Node(queue[i - 1].name.clone()), next_in_line: i == 1, ahead: i }
            );
        }
        assert_eq!(holders(&queue), [0]);
    }

    #[test]
    fn readers_share_and_wait_only_for_writers_ahead() {
        // R R W R r(kazoo) W R: the first two read together; the rest wait.
        let queue = q(&[CuratorRead, KazooRead, CuratorWrite, CuratorRead, KazooRead, KazooLock, CuratorRead]);
        assert_eq!(holders(&queue), [0, 1]);
        // A reader behind one writer watches it and is next in line.
        assert_eq!(
            verdict(&queue, 3),
            Ok(Verdict::Wait { watch: Watch::Node(queue[2].name.clone()), next_in_line: true, ahead: 1 })
        );
        assert_eq!(watch_of(&verdict(&queue, 4).unwrap()), Some(&Watch::Node(queue[2].name.clone())));
        // Behind two writers: it watches the nearest one.
        assert_eq!(
            verdict(&queue, 6),
            Ok(Verdict::Wait { watch: Watch::Node(queue[5].name.clone()), next_in_line: false, ahead: 2 })
        );
        // A writer waits for readers too.
        assert_eq!(
            verdict(&queue, 2),
            Ok(Verdict::Wait { watch: Watch::Node(queue[1].name.clone()), next_in_line: false, ahead: 2 })
        );
        // Readers alone all hold.
        assert_eq!(holders(&q(&[CuratorRead, KazooRead, CuratorRead])), [0, 1, 2]);
        // A writer first: it alone holds.
        assert_eq!(holders(&q(&[CuratorWrite, CuratorRead, CuratorRead])), [0]);
        // A Curator mutex or kazoo lock ahead blocks a reader like a writer does.
        assert_eq!(holders(&q(&[CuratorMutex, CuratorRead])), [0]);
        assert_eq!(holders(&q(&[KazooLock, KazooRead, CuratorRead])), [0]);
    }

    #[test]
    fn limit_n_lets_n_hold_wakes_only_the_first_waiter_and_chains_the_rest() {
        let queue = q(&[lim(3), lim(3), lim(3), lim(3), lim(3), lim(3)]);
        assert_eq!(holders(&queue), [0, 1, 2]);
        assert_eq!(verdict(&queue, 3), Ok(Verdict::Wait { watch: Watch::Directory, next_in_line: true, ahead: 3 }));
        assert_eq!(
            verdict(&queue, 4),
            Ok(Verdict::Wait { watch: Watch::Node(queue[3].name.clone()), next_in_line: false, ahead: 4 })
        );
        assert_eq!(holders(&q(&[lim(1), lim(1)])), [0]);
    }

    #[test]
    fn a_limit_must_match_and_limited_paths_take_no_other_kind() {
        let queue = q(&[lim(2), lim(3)]);
        let n = |v| NonZeroU32::new(v).unwrap();
        assert_eq!(
            verdict(&queue, 1),
            Err(Refusal::LimitMismatch { ours: n(3), theirs: n(2), node: queue[0].name.clone() })
        );
        let e = verdict(&queue, 1).unwrap_err().to_string();
        assert!(e.contains("use --limit 2") && e.contains("this is --limit 3"), "{e}");
        // The first node decides: it holds.
        assert_eq!(verdict(&queue, 0), Ok(Verdict::Proceed));
        // A contender behind a refusing one (about to leave) is not refused for it.
        let queue = q(&[lim(2), lim(3), lim(2)]);
        assert_eq!(verdict(&queue, 2), Ok(Verdict::Wait { watch: Watch::Directory, next_in_line: true, ahead: 2 }));
        for other in [CuratorMutex, CuratorRead, CuratorWrite, KazooLock, KazooRead] {
            let queue = q(&[other, lim(2)]);
            assert!(matches!(verdict(&queue, 1), Err(Refusal::Mixed { .. })), "{other:?}");
            let queue = q(&[lim(2), other]);
            assert!(matches!(verdict(&queue, 1), Err(Refusal::Mixed { .. })), "{other:?}");
            assert_eq!(verdict(&queue, 0), Ok(Verdict::Proceed), "{other:?}");
        }
        // holders() applies the ordering rule alone, each node by its own limit.
        assert_eq!(holders(&q(&[lim(2), lim(3), lim(3), lim(2)])), [0, 1, 2]);
    }

    #[test]
    fn a_plain_exclusive_contender_refuses_a_read_write_lock_but_writers_and_readers_mix_with_mutexes() {
        for rw in [CuratorRead, CuratorWrite, KazooRead] {
            let queue = q(&[rw, CuratorMutex]);
            let e = verdict(&queue, 1).unwrap_err().to_string();
            assert!(e.contains("use --write"), "{e}");
        }
        // kazoo's Lock/WriteLock nodes are exclusive and join either kind of queue.
        assert_eq!(holders(&q(&[KazooLock, CuratorMutex])), [0]);
        assert_eq!(holders(&q(&[CuratorRead, KazooLock, CuratorWrite])), [0]);
        // zklock --write and --shared on a mutex path: they wait for the mutex holder.
        let queue = q(&[CuratorMutex, CuratorWrite, CuratorRead]);
        assert_eq!(holders(&queue), [0]);
        // A mutex holder that a reader queued behind still holds, for status.
        assert_eq!(holders(&q(&[CuratorMutex, CuratorRead])), [0]);
    }

    #[test]
    fn every_mix_of_kinds_keeps_the_bound() {
        // Exhaustive over queues of up to 5 nodes of 6 kinds, among the contenders the verdict
        // lets proceed: at most one holder when an
        // exclusive or write node holds; never an exclusive holder beside another; at most N
        // limit holders; every waiter watches a node ahead of it (or the directory), never
        // itself.
        let kinds = [CuratorMutex, CuratorRead, CuratorWrite, KazooLock, KazooRead, lim(2)];
        let mut queues: Vec<Vec<NodeKind>> = vec![vec![]];
        for _ in 0..5 {
            let mut next = Vec::new();
            for qk in &queues {
                for &k in &kinds {
                    let mut v = qk.clone();
                    v.push(k);
                    next.push(v);
                }
            }
            for v in &next {
                let queue = q(v);
                // Those the recipe lets run: a refused contender leaves the queue.
                let held: Vec<usize> =
                    (0..queue.len()).filter(|&i| verdict(&queue, i) == Ok(Verdict::Proceed)).collect();
                let exclusive_held = held.iter().any(|&i| queue[i].kind.mode().excludes_all());
                if exclusive_held {
                    assert_eq!(held.len(), 1, "{v:?}: {held:?}");
                }
                let limits = held.iter().filter(|&&i| matches!(queue[i].kind, NodeKind::Limit(_))).count();
                assert!(limits <= 2, "{v:?}");
                if limits > 0 {
                    assert_eq!(limits, held.len(), "{v:?}");
                }
                for i in 0..queue.len() {
                    if let Ok(Verdict::Wait { watch: Watch::Node(w), .. }) = verdict(&queue, i) {
                        let at = queue.iter().position(|c| c.name == w).unwrap();
                        assert!(at < i, "{v:?}: {i} watches {at}");
                    }
                }
            }
            queues = next;
        }
    }
}
