//! `zklock status`: who holds a lock, who waits and for how long — as a table for people and
//! as a versioned JSON document for scripts; `--recursive` lists every lock below a path and
//! `--watch` prints a line whenever a holder or queue changes (driven by watches, not polling).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use zookeeper_client::{Client, MultiReadResult, Stat};

use crate::cli::{Format, StatusArgs};
use crate::lock;
use crate::nodedata::NodeData;
use crate::queue::{self, classify};
use crate::signals::Signals;

/// Version of the JSON document printed by `--json`.
pub const JSON_FORMAT: u32 = 1;
/// Reads per multi-read request, well below the server's default 1 MiB packet limit.
const READ_BATCH: usize = 500;
/// `--recursive` stops after visiting this many nodes.
const MAX_VISITED: usize = 100_000;

/// Exit status: every lock held.
pub const HELD: u8 = 0;
/// Exit status: a lock is free.
pub const FREE: u8 = 1;
/// Exit status: with `--held-longer-than` or `--waiting-longer-than`, a lock matched.
pub const ALERT: u8 = 2;
/// Requests in flight at once while walking and reading many locks.
const PIPELINE: usize = 64;

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

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

fn seconds_between(earlier: SystemTime, now: SystemTime) -> f64 {
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
fn summarize_read(data: Option<&[u8]>) -> String {
    data.map_or_else(|| "(not readable: ACL)".into(), summarize)
}

/// A node of a lock directory as read: its data (`None` when its ACL does not let us read
/// it) and its stat.
type ReadNode = (Option<Vec<u8>>, Stat);

/// Data and stat of each path, in batches; `None` where the node vanished meanwhile. A node we
/// may not read still has a stat (exists needs no permission), read in one pipelined round.
async fn read_all(client: &Client, paths: &[String]) -> Result<Vec<Option<ReadNode>>> {
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
struct NoAuthOn {
    path: String,
    doing: String,
}

fn no_auth_on(path: &str, doing: &str) -> anyhow::Error {
    NoAuthOn { path: path.to_owned(), doing: format!("{doing} {path}") }.into()
}

/// Reads one lock: its queue in order, with each node's data.
pub async fn inspect(client: &Client, path: &str, now: SystemTime) -> Result<LockReport> {
    let children = match crate::zk::retry(client, || client.list_children(path)).await {
        Ok(c) => c,
        Err(zookeeper_client::Error::NoNode) => {
            return Ok(LockReport {
                path: path.into(),
                exists: false,
                held: false,
                limit: None,
                holder: None,
                holders: vec![],
                waiters: vec![],
                other_nodes: vec![],
            })
        }
        Err(zookeeper_client::Error::NoAuth) => return Err(no_auth_on(path, "list")),
        Err(e) => return Err(e).with_context(|| format!("cannot list {path}")),
    };
    report_from_children(client, path, children, now).await
}

async fn report_from_children(
    client: &Client,
    path: &str,
    children: Vec<String>,
    now: SystemTime,
) -> Result<LockReport> {
    let paths: Vec<String> = children.iter().map(|c| format!("{path}/{c}")).collect();
    let nodes = read_all(client, &paths).await?;
    let mut queue = Vec::new();
    let mut other_nodes = Vec::new();
    for (name, node) in children.into_iter().zip(nodes) {
        let Some((data, stat)) = node else { continue };
        match classify(&name) {
            Some(c) => queue.push((c, data, stat)),
            None => other_nodes.push(OtherNode {
                node: name,
                session_id: (stat.ephemeral_owner != 0).then(|| format!("{:#x}", stat.ephemeral_owner)),
                data: summarize_read(data.as_deref()),
            }),
        }
    }
    queue.sort_by_key(|(c, _, _)| c.seq);
    other_nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let order: Vec<queue::Contender> = queue.iter().map(|(c, _, _)| c.clone()).collect();
    let holding = queue::holders(&order);
    let limit = order.iter().find_map(|c| match c.kind {
        queue::NodeKind::Limit(n) => Some(n.get()),
        _ => None,
    });
    let (mut holders, mut waiters) = (Vec::new(), Vec::new());
    for (position, (c, data, stat)) in queue.into_iter().enumerate() {
        let doc = data.as_deref().and_then(NodeData::parse);
        let joined = from_millis(stat.ctime);
        let holds = holding.contains(&position);
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
        let contender = Contender {
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
            data: doc.is_none().then(|| summarize_read(data.as_deref())),
            host: doc.as_ref().map(|d| d.host.clone()),
            pid: doc.as_ref().map(|d| d.pid),
            user: doc.as_ref().map(|d| d.user.clone()),
            label: doc.as_ref().and_then(|d| d.label.clone()),
            command: doc.as_ref().map(|d| d.command.clone()),
            zklock_version: doc.as_ref().map(|d| d.version.clone()),
        };
        if holds {
            holders.push(contender);
        } else {
            waiters.push(contender);
        }
    }
    Ok(LockReport {
        path: path.into(),
        exists: true,
        held: !holders.is_empty(),
        limit,
        holder: holders.first().cloned(),
        holders,
        waiters,
        other_nodes,
    })
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

fn compact(seconds: f64) -> String {
    let d = Duration::from_secs(seconds as u64);
    if d.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(d).to_string().replace(' ', "")
}

fn who(c: &Contender) -> String {
    match (&c.host, c.pid, &c.command) {
        (Some(host), Some(pid), Some(cmd)) => format!("{host} pid {pid} ({cmd})"),
        _ => format!("a {} client (session {})", c.kind, c.session_id),
    }
}

/// The one-line summary of a lock, as `--recursive` and `--watch` print it.
pub fn summary_line(r: &LockReport) -> String {
    let delayed = r
        .holders
        .iter()
        .filter_map(|h| h.delay_seconds_left)
        .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))))
        .map(|left| format!(" (lock-delay: its command starts in {})", compact(left.ceil())))
        .unwrap_or_default();
    let line = match (&r.holder, r.exists) {
        (_, false) => format!("{}: free (no such lock path)", r.path),
        (None, true) => format!("{}: free", r.path),
        (Some(h), true) if r.holders.len() == 1 => {
            format!("{}: held by {} for {}, {} waiting", r.path, who(h), compact(h.seconds), r.waiters.len())
        }
        (Some(_), true) => {
            let of = r.limit.map(|n| format!(" of at most {n}")).unwrap_or_default();
            let who: Vec<String> = r.holders.iter().map(who).collect();
            format!("{}: held by {}{of} ({}), {} waiting", r.path, r.holders.len(), who.join(", "), r.waiters.len())
        }
    };
    line + &delayed
}

/// A contender's state in the text tables: `holding`, `delayed` (with the time left) or
/// `waiting`.
fn state(c: &Contender) -> String {
    match (c.holding, c.delay_seconds_left) {
        (true, Some(left)) => format!("delayed ({} left)", compact(left.ceil())),
        (true, None) => "holding".into(),
        (false, _) => "waiting".into(),
    }
}

/// Renders rows as columns separated by two spaces.
fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from("  ");
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The human-readable view of one lock: a summary line, then a table of the queue.
pub fn render_text(r: &LockReport) -> String {
    let mut out = summary_line(r);
    out.push('\n');
    let contenders: Vec<&Contender> = r.holders.iter().chain(r.waiters.iter()).collect();
    if !contenders.is_empty() {
        let dash = || "-".to_string();
        let mut rows =
            vec![["POS", "STATE", "FOR", "JOINED", "HOST", "PID", "USER", "COMMAND", "LABEL", "TOKEN", "SESSION"]
                .map(String::from)
                .to_vec()];
        for c in contenders {
            rows.push(vec![
                c.position.to_string(),
                state(c),
                compact(c.seconds),
                format!("{} ago", compact(c.joined_seconds_ago)),
                c.host.clone().unwrap_or_else(dash),
                c.pid.map_or_else(dash, |p| p.to_string()),
                c.user.clone().unwrap_or_else(dash),
                c.command.clone().unwrap_or_else(|| format!("({} node)", c.kind)),
                c.label.clone().or_else(|| c.data.clone()).unwrap_or_else(dash),
                c.fencing_token.to_string(),
                c.session_id.clone(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    for o in &r.other_nodes {
        let owner = o.session_id.as_ref().map_or("persistent".to_string(), |s| format!("ephemeral, session {s}"));
        out.push_str(&format!("  other node {} ({owner}): {}\n", o.node, o.data));
    }
    out
}

/// The `--recursive` view: one line per lock.
pub fn render_recursive(reports: &[LockReport]) -> String {
    if reports.is_empty() {
        return String::new();
    }
    let mut rows = vec![["LOCK", "STATE", "HOLDER", "FOR", "WAITING"].map(String::from).to_vec()];
    for r in reports {
        let (state, holder, held_for) = match &r.holder {
            Some(h) if r.holders.len() > 1 => {
                ("held", format!("{} holders, first {}", r.holders.len(), who(h)), compact(h.seconds))
            }
            Some(h) if h.delay_seconds_left.is_some() => ("delayed", who(h), compact(h.seconds)),
            Some(h) => ("held", who(h), compact(h.seconds)),
            None => ("free", "-".into(), "-".into()),
        };
        rows.push(vec![r.path.clone(), state.into(), holder, held_for, r.waiters.len().to_string()]);
    }
    table(&rows)
}

fn exit_status(reports: &[LockReport]) -> u8 {
    if !reports.is_empty() && reports.iter().all(|r| r.held) {
        HELD
    } else {
        FREE
    }
}

/// `zklock status`.
pub async fn status(args: StatusArgs, quiet: bool) -> Result<u8> {
    for path in &args.locks {
        if path != "/" {
            lock::validate_lock_path(path)?;
        }
    }
    if args.recursive && args.locks.len() != 1 {
        bail!("--recursive takes exactly one path");
    }
    let connect = crate::zk::ConnectOptions::from_args(&args.connect)?;
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    let client = tokio::select! {
        c = connect.connect() => c?,
        sig = signals.recv_terminating() => return Ok(crate::exit::from_signal(sig as i32)),
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
            r = watch(&client, &args.locks, quiet) => r,
            _ = signals.recv_terminating() => Ok(HELD),
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

async fn snapshot(client: &Client, args: &StatusArgs, quiet: bool) -> Result<u8> {
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
        let code = if matching.is_empty() { HELD } else { ALERT };
        (matching, code)
    } else {
        let code = exit_status(&reports);
        (reports, code)
    };
    let text = match args.format() {
        Format::Json => {
            let doc = Report { zklock_status: JSON_FORMAT, generated_at: rfc3339(now), locks: reports };
            serde_json::to_string_pretty(&doc).expect("report serializes") + "\n"
        }
        Format::Prometheus => render_prometheus(&reports, now),
        // An alert check prints nothing when nothing matched: cron then mails nothing.
        Format::Text if alerting && reports.is_empty() => String::new(),
        Format::Text if args.recursive && reports.is_empty() => {
            let missing = if root_exists { "" } else { " (no such path)" };
            format!("no locks below {}{missing}\n", args.locks[0])
        }
        Format::Text if args.recursive => render_recursive(&reports),
        Format::Text => reports.iter().map(render_text).collect::<Vec<_>>().join("\n"),
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

/// A label value in the Prometheus text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The reports in the Prometheus text exposition format (version 0.0.4).
pub fn render_prometheus(reports: &[LockReport], now: SystemTime) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let path = |r: &LockReport| format!("path=\"{}\"", label(&r.path));
    family(
        "zklock_lock_held",
        "Whether the lock is held (1) or free (0).",
        reports.iter().map(|r| (path(r), f64::from(u8::from(r.held)))).collect(),
    );
    family(
        "zklock_lock_holders",
        "How many hold the lock (several for shared and --limit locks).",
        reports.iter().map(|r| (path(r), r.holders.len() as f64)).collect(),
    );
    family(
        "zklock_lock_held_seconds",
        "How long each holder has held the lock.",
        reports
            .iter()
            .flat_map(|r| {
                r.holders.iter().map(move |h| {
                    let labels = format!(
                        "{},node=\"{}\",kind=\"{}\",holder_host=\"{}\",holder_pid=\"{}\",holder_user=\"{}\"",
                        path(r),
                        label(&h.node),
                        h.kind,
                        label(h.host.as_deref().unwrap_or("")),
                        h.pid.map(|p| p.to_string()).unwrap_or_default(),
                        label(h.user.as_deref().unwrap_or(""))
                    );
                    (labels, h.seconds)
                })
            })
            .collect(),
    );
    family(
        "zklock_lock_waiters",
        "How many wait for the lock.",
        reports.iter().map(|r| (path(r), r.waiters.len() as f64)).collect(),
    );
    family(
        "zklock_lock_oldest_wait_seconds",
        "How long the longest waiting contender has waited (0 when none waits).",
        reports.iter().map(|r| (path(r), r.waiters.iter().map(|w| w.seconds).fold(0.0, f64::max))).collect(),
    );
    family(
        "zklock_lock_delay_seconds",
        "Seconds left of the lock-delay a holder waits out before starting its command, after its predecessor vanished without a clean release (0 when none).",
        reports
            .iter()
            .map(|r| (path(r), r.holders.iter().filter_map(|h| h.delay_seconds_left).fold(0.0, f64::max)))
            .collect(),
    );
    family(
        "zklock_lock_limit",
        "N of a --limit N lock (only for such locks).",
        reports.iter().filter_map(|r| r.limit.map(|n| (path(r), f64::from(n)))).collect(),
    );
    let ts = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let _ = writeln!(
        out,
        "# HELP zklock_status_timestamp_seconds When zklock status made this report.\n\
         # TYPE zklock_status_timestamp_seconds gauge\nzklock_status_timestamp_seconds {ts:.3}"
    );
    out
}

/// Prints the state of each lock, then a line each time its holder or queue changes.
async fn watch(client: &Client, paths: &[String], quiet: bool) -> Result<u8> {
    let mut tasks = tokio::task::JoinSet::new();
    for path in paths {
        let (client, path) = (client.clone(), path.clone());
        tasks.spawn(async move { watch_one(&client, &path, quiet).await });
    }
    // A watch ends only on an error or when stdout is closed; either ends them all.
    if let Some(r) = tasks.join_next().await {
        r.context("watch task failed")??;
    }
    Ok(HELD)
}

async fn watch_one(client: &Client, path: &str, quiet: bool) -> Result<()> {
    let mut last: Option<(bool, Vec<(String, bool)>)> = None;
    loop {
        let watched = crate::zk::retry(client, || client.list_and_watch_children(path)).await;
        let (report, watcher) = match watched {
            Ok((children, watcher)) => {
                (report_from_children(client, path, children, SystemTime::now()).await?, Some(watcher))
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_of_raw_data() {
        assert_eq!(summarize(b""), "(empty)");
        assert_eq!(summarize(b"10.0.0.7"), "\"10.0.0.7\"");
        assert_eq!(summarize(b"a\n  b"), "\"a b\"");
        assert_eq!(summarize(&[0, 159, 146, 150]), "(4 bytes of binary data)");
        let long = "x".repeat(100);
        assert_eq!(summarize(long.as_bytes()), format!("{:?}… (100 bytes)", "x".repeat(60)));
    }

    #[test]
    fn compact_durations() {
        assert_eq!(compact(0.4), "0s");
        assert_eq!(compact(192.9), "3m12s");
        assert_eq!(compact(90061.0), "1day1h1m1s");
    }

    #[test]
    fn exit_status_for_scripts() {
        let free = LockReport {
            path: "/a".into(),
            exists: false,
            held: false,
            limit: None,
            holder: None,
            holders: vec![],
            waiters: vec![],
            other_nodes: vec![],
        };
        assert_eq!(exit_status(&[]), FREE);
        assert_eq!(exit_status(&[free]), FREE);
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![vec!["A".to_string(), "BB".into(), "C".into()], vec!["long".into(), "x".into(), "".into()]];
        assert_eq!(table(&rows), "  A     BB  C\n  long  x\n");
    }
}
