//! The text views of `status`: one lock as a summary line and a table of its queue, and the
//! `--recursive` list, one line per lock.

use std::time::Duration;

use super::model::{Contender, LockReport};

pub(super) fn compact(seconds: f64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_durations() {
        assert_eq!(compact(0.4), "0s");
        assert_eq!(compact(192.9), "3m12s");
        assert_eq!(compact(90061.0), "1day1h1m1s");
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![vec!["A".to_string(), "BB".into(), "C".into()], vec!["long".into(), "x".into(), "".into()]];
        assert_eq!(table(&rows), "  A     BB  C\n  long  x\n");
    }
}
