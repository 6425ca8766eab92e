//! The history of a fault run, and the checker that judges it.
//!
//! Every command run under zklock is [`SCRIPT`]: it appends to one shared file, one line per
//! event, `<ns> <run id> <event> [args]`, where `<ns>` is CLOCK_REALTIME in nanoseconds (bash's
//! `$EPOCHREALTIME`, the same clock as the test's [`now_ns`]; one machine, one clock):
//!
//! * `start <fencing token> <pid>` when it starts,
//! * `beat` every ~50 ms while it runs,
//! * `stop` when it receives the stop signal (SIGTERM; it then exits 0),
//! * `end` when it finishes on its own.
//!
//! The test adds its own lines (`zklock-spawn`, `zklock-exit <code>`, faults) through
//! [`History::note`]. [`check`] proves: no two commands' `[start, last sign of life]` overlap
//! (except where a frozen zklock or a session expired from outside makes that impossible to
//! promise, and then only with a larger fencing token for the later command); tokens strictly
//! rise in holding order; no lock node is left; every zklock exit code is one allowed for what
//! happened and consistent with what its command did.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::wait_until;

/// The command run under zklock: `bash -c SCRIPT bash <history> <run id> <hold>`, where
/// `<hold>` is `beats:N` (finish after N heartbeats) or a path (finish once it exists).
pub const SCRIPT: &str = r#"
h=$1 id=$2 hold=$3
echo "${EPOCHREALTIME//[.,]/}000 $id start $ZKLOCK_FENCING_TOKEN $$" >> "$h"
trap 'echo "${EPOCHREALTIME//[.,]/}000 $id stop" >> "$h"; exit 0' TERM
n=0
while :; do
  case $hold in
    beats:*) [ "$n" -ge "${hold#beats:}" ] && break ;;
    *) [ -e "$hold" ] && break ;;
  esac
  echo "${EPOCHREALTIME//[.,]/}000 $id beat" >> "$h"
  sleep 0.05
  n=$((n+1))
done
echo "${EPOCHREALTIME//[.,]/}000 $id end" >> "$h"
"#;

/// CLOCK_REALTIME in nanoseconds, the history's clock.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// How long a command runs.
#[derive(Clone, Debug)]
pub enum Hold {
    /// About N x 50 ms.
    Beats(u32),
    /// Until this file exists.
    UntilFile(PathBuf),
}

impl Hold {
    fn arg(&self) -> String {
        match self {
            Hold::Beats(n) => format!("beats:{n}"),
            Hold::UntilFile(p) => p.to_string_lossy().into_owned(),
        }
    }
}

/// One line of the history.
#[derive(Clone, Debug)]
pub struct Event {
    pub ts: u64,
    pub id: String,
    pub kind: String,
    pub args: Vec<String>,
}

/// What one command did, from its lines.
#[derive(Clone, Debug)]
pub struct Command {
    pub id: String,
    pub start: u64,
    /// The last sign of life.
    pub last: u64,
    pub token: i64,
    pub pid: i32,
    /// When it got the stop signal.
    pub stopped: Option<u64>,
    pub ended: bool,
}

/// The shared history file.
pub struct History {
    path: PathBuf,
}

impl History {
    pub fn new(dir: &Path) -> History {
        let path = dir.join("history");
        std::fs::write(&path, "").expect("create the history file");
        History { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `<now> <who> <what>` (one write, so lines never interleave).
    pub fn note(&self, who: &str, what: &str) -> u64 {
        let ts = now_ns();
        let mut f = OpenOptions::new().append(true).open(&self.path).expect("open the history");
        f.write_all(format!("{ts} {who} {what}\n").as_bytes()).expect("append to the history");
        ts
    }

    /// The argv of the command for run `id`.
    pub fn argv(&self, id: &str, hold: &Hold) -> Vec<String> {
        vec![
            "bash".into(),
            "-c".into(),
            SCRIPT.into(),
            "bash".into(),
            self.path.to_string_lossy().into_owned(),
            id.into(),
            hold.arg(),
        ]
    }

    /// Every well-formed line (a line cut short by a kill is skipped).
    pub fn events(&self) -> Vec<Event> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let ts = parts.next()?.parse().ok()?;
                let id = parts.next()?.to_owned();
                let kind = parts.next()?.to_owned();
                Some(Event { ts, id, kind, args: parts.map(str::to_owned).collect() })
            })
            .collect()
    }

    /// The commands, by run id.
    pub fn commands(&self) -> BTreeMap<String, Command> {
        commands(&self.events())
    }

    /// Waits for the first `kind` event of run `id`.
    pub fn wait_event(&self, id: &str, kind: &str, patience: Duration) -> Event {
        let mut found = None;
        wait_until(patience, &format!("'{id} {kind}' in the history"), || {
            found = self.events().into_iter().find(|e| e.id == id && e.kind == kind);
            found.is_some()
        });
        found.unwrap()
    }

    /// The whole file, for failure messages.
    pub fn dump(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

/// Builds the commands from the events (lines of the test itself are not commands).
pub fn commands(events: &[Event]) -> BTreeMap<String, Command> {
    let mut out: BTreeMap<String, Command> = BTreeMap::new();
    for e in events {
        match e.kind.as_str() {
            "start" => {
                out.insert(
                    e.id.clone(),
                    Command {
                        id: e.id.clone(),
                        start: e.ts,
                        last: e.ts,
                        token: e.args.first().and_then(|t| t.parse().ok()).unwrap_or(-1),
                        pid: e.args.get(1).and_then(|p| p.parse().ok()).unwrap_or(-1),
                        stopped: None,
                        ended: false,
                    },
                );
            }
            "beat" | "stop" | "end" => {
                if let Some(c) = out.get_mut(&e.id) {
                    c.last = c.last.max(e.ts);
                    match e.kind.as_str() {
                        "stop" => c.stopped = c.stopped.or(Some(e.ts)),
                        "end" => c.ended = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// What a run's mode allows beside it, on its lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// Nobody (exclusive, or the write side of a read-write lock).
    Alone,
    /// Other readers (`--shared`).
    Reader,
    /// At most N holders of the same limit in all (`--limit N`).
    Limit(usize),
}

/// What the test knows about one zklock run.
#[derive(Clone, Debug)]
pub struct Run {
    pub id: String,
    /// The lock it runs on: only runs on the same lock are checked against each other.
    pub lock: String,
    pub bound: Bound,
    pub exit: i32,
    /// Exit codes allowed for what happened to this run.
    pub allowed: Vec<i32>,
    /// Intervals during which this zklock could not keep its promise: it was frozen (SIGSTOP),
    /// or its session was expired from outside before it could know. A later command may
    /// overlap this one's only if it began after such an interval began, and only with a
    /// larger fencing token.
    pub excused: Vec<(u64, u64)>,
}

impl Run {
    pub fn new(id: &str, exit: i32, allowed: &[i32]) -> Run {
        Run {
            id: id.to_owned(),
            lock: String::new(),
            bound: Bound::Alone,
            exit,
            allowed: allowed.to_vec(),
            excused: Vec::new(),
        }
    }

    /// On `lock` with `bound` (the default: one lock, exclusive).
    pub fn on(mut self, lock: &str, bound: Bound) -> Run {
        self.lock = lock.to_owned();
        self.bound = bound;
        self
    }

    pub fn excused(mut self, from: u64, to: u64) -> Run {
        self.excused.push((from, to));
        self
    }
}

/// The checker's findings.
#[derive(Debug, Default)]
pub struct Report {
    /// Commands that started.
    pub commands: usize,
    /// Overlaps that break the promise.
    pub overlaps: Vec<String>,
    /// Overlaps excused by a frozen zklock or an outside expiry, with rising tokens.
    pub fenced: Vec<String>,
    pub token_errors: Vec<String>,
    pub leaked: Vec<String>,
    pub unexpected_exits: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.overlaps.is_empty()
            && self.token_errors.is_empty()
            && self.leaked.is_empty()
            && self.unexpected_exits.is_empty()
    }

    /// A readable account of everything found.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "commands={} overlaps={} fenced_overlaps={} token_errors={} leaked_nodes={} unexpected_exits={}\n",
            self.commands,
            self.overlaps.len(),
            self.fenced.len(),
            self.token_errors.len(),
            self.leaked.len(),
            self.unexpected_exits.len()
        );
        for (what, list) in [
            ("overlap", &self.overlaps),
            ("fenced overlap", &self.fenced),
            ("token", &self.token_errors),
            ("leaked node", &self.leaked),
            ("unexpected exit", &self.unexpected_exits),
        ] {
            for item in list {
                let _ = writeln!(s, "  {what}: {item}");
            }
        }
        s
    }

    /// Panics with the report and the whole history unless everything holds.
    pub fn assert_ok(&self, history: &History) {
        assert!(self.ok(), "history check failed:\n{}\n--- history ---\n{}", self.describe(), history.dump());
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Checks a history against the runs the test made and the lock nodes left at the end.
pub fn check(events: &[Event], runs: &[Run], leaked: &[String]) -> Report {
    let cmds = commands(events);
    let mut report = Report { commands: cmds.len(), leaked: leaked.to_vec(), ..Report::default() };
    let runs_by_id: BTreeMap<&str, &Run> = runs.iter().map(|r| (r.id.as_str(), r)).collect();

    let mut order: Vec<&Command> = cmds.values().collect();
    order.sort_by_key(|c| (c.start, c.id.clone()));
    let exclusive = Run::new("", 0, &[]);
    let run_of = |id: &str| *runs_by_id.get(id).unwrap_or(&&exclusive);
    for (j, b) in order.iter().enumerate() {
        let rb = run_of(&b.id);
        for a in &order[..j] {
            let ra = run_of(&a.id);
            if a.last < b.start || ra.lock != rb.lock {
                continue;
            }
            let shared = match (ra.bound, rb.bound) {
                (Bound::Reader, Bound::Reader) => true,
                (Bound::Limit(n), Bound::Limit(m)) if n == m => {
                    // Together, unless more than n were alive when b started.
                    let alive = order[..j]
                        .iter()
                        .filter(|c| run_of(&c.id).lock == rb.lock && c.start <= b.start && c.last >= b.start)
                        .count();
                    alive < n
                }
                _ => false,
            };
            if shared {
                continue;
            }
            let what = format!(
                "{} [token {}] still alive {:.1} ms after {} [token {}] started",
                a.id,
                a.token,
                ms(a.last - b.start),
                b.id,
                b.token
            );
            let excused = ra.excused.iter().any(|&(from, to)| from <= b.start && to >= a.start);
            if excused && b.token > a.token {
                report.fenced.push(what);
            } else {
                report.overlaps.push(what);
            }
        }
        // Tokens rise from one exclusive holder to the next on the same lock (holders that
        // may share start in any order).
        let previous = order[..j].iter().rev().find(|c| run_of(&c.id).lock == rb.lock);
        if let Some(p) = previous {
            // A negative token: a command run by another library, which gives none.
            let known = b.token >= 0 && p.token >= 0;
            if known && rb.bound == Bound::Alone && run_of(&p.id).bound == Bound::Alone && b.token <= p.token {
                report
                    .token_errors
                    .push(format!("{} [token {}] started after {} [token {}]", b.id, b.token, p.id, p.token));
            }
        }
    }

    for r in runs {
        let cmd = cmds.get(&r.id);
        let consistent = match r.exit {
            // Ran to its own end, never told to stop.
            0 => cmd.is_some_and(|c| c.ended && c.stopped.is_none()),
            // Lost the lock while the command ran.
            124 => cmd.is_some(),
            // Every other status of zklock's means the command never ran.
            _ => cmd.is_none(),
        };
        if !r.allowed.contains(&r.exit) || !consistent {
            let did = match cmd {
                None => "never started".to_owned(),
                Some(c) => format!("started, ended={}, stopped={}", c.ended, c.stopped.is_some()),
            };
            report
                .unexpected_exits
                .push(format!("{} exited {} (allowed {:?}); its command {did}", r.id, r.exit, r.allowed));
        }
    }
    for id in cmds.keys() {
        if !runs_by_id.contains_key(id.as_str()) {
            report.unexpected_exits.push(format!("{id}: a command ran for a run the test does not know"));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: u64, id: &str, kind: &str, args: &[&str]) -> Event {
        Event { ts, id: id.into(), kind: kind.into(), args: args.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn checker_finds_overlaps_tokens_and_bad_exits() {
        let events = vec![
            ev(100, "a", "start", &["10", "1"]),
            ev(150, "a", "beat", &[]),
            ev(200, "a", "end", &[]),
            ev(300, "b", "start", &["20", "2"]),
            ev(400, "c", "start", &["15", "3"]),
            ev(450, "b", "beat", &[]),
            ev(500, "c", "end", &[]),
        ];
        let runs = vec![Run::new("a", 0, &[0]), Run::new("b", 124, &[124]), Run::new("c", 0, &[0, 124])];
        let r = check(&events, &runs, &[]);
        assert_eq!(r.commands, 3);
        assert_eq!(r.overlaps.len(), 1, "{}", r.describe()); // b alive at 450 after c started at 400
        assert_eq!(r.token_errors.len(), 1, "{}", r.describe()); // c's 15 after b's 20
        assert!(r.unexpected_exits.is_empty(), "{}", r.describe());

        // Excused (frozen) and rising tokens: fenced, not an overlap.
        let events2 = vec![
            ev(100, "a", "start", &["10", "1"]),
            ev(300, "b", "start", &["20", "2"]),
            ev(350, "a", "beat", &[]),
            ev(400, "b", "end", &[]),
        ];
        let runs2 = vec![Run::new("a", 124, &[124]).excused(120, 390), Run::new("b", 0, &[0])];
        let r = check(&events2, &runs2, &[]);
        assert!(r.ok(), "{}", r.describe());
        assert_eq!(r.fenced.len(), 1);

        // Exit 0 with a stop, 75 after running, an unknown command.
        let events3 = vec![ev(1, "x", "start", &["1", "1"]), ev(2, "x", "stop", &[]), ev(3, "y", "start", &["2", "2"])];
        let runs3 = vec![Run::new("x", 0, &[0]), Run::new("y", 75, &[75]), Run::new("z", 125, &[0])];
        let r = check(&events3, &runs3, &["n".into()]);
        assert_eq!(r.unexpected_exits.len(), 3, "{}", r.describe());
        assert!(!r.ok());
    }

    #[test]
    fn checker_allows_readers_together_and_n_limit_holders_but_no_more() {
        // Two readers together, then a writer beside one of them: one overlap.
        let events = vec![
            ev(100, "r1", "start", &["10", "1"]),
            ev(110, "r2", "start", &["11", "2"]),
            ev(200, "r1", "end", &[]),
            ev(190, "w", "start", &["12", "3"]),
            ev(250, "r2", "end", &[]),
            ev(300, "w", "end", &[]),
        ];
        let rw = |id: &str, b| Run::new(id, 0, &[0]).on("/rw", b);
        let runs = vec![rw("r1", Bound::Reader), rw("r2", Bound::Reader), rw("w", Bound::Alone)];
        let r = check(&events, &runs, &[]);
        assert_eq!(r.overlaps.len(), 2, "w beside r1 and r2: {}", r.describe());
        // The same on different locks: no overlap.
        let runs =
            vec![rw("r1", Bound::Reader), rw("r2", Bound::Reader), Run::new("w", 0, &[0]).on("/other", Bound::Alone)];
        assert!(check(&events, &runs, &[]).ok());

        // --limit 2: two together are fine, a third at once is not.
        let events = vec![
            ev(100, "a", "start", &["1", "1"]),
            ev(110, "b", "start", &["2", "2"]),
            ev(120, "c", "start", &["3", "3"]),
            ev(200, "a", "end", &[]),
            ev(210, "b", "end", &[]),
            ev(220, "c", "end", &[]),
        ];
        let lim = |id: &str| Run::new(id, 0, &[0]).on("/lim", Bound::Limit(2));
        let r = check(&events, &[lim("a"), lim("b"), lim("c")], &[]);
        assert_eq!(r.overlaps.len(), 2, "c started while a and b held: {}", r.describe());
        let r =
            check(&events[..2].iter().chain(&events[3..5]).cloned().collect::<Vec<_>>(), &[lim("a"), lim("b")], &[]);
        assert!(r.ok(), "{}", r.describe());
    }
}
