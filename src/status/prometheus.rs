//! The Prometheus text exposition format (version 0.0.4) of `status`, for node_exporter's
//! textfile collector. Labels take bounded values only: paths, hosts, users.

use std::time::{SystemTime, UNIX_EPOCH};

use super::model::LockReport;

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
    // Labels take bounded values only (paths x hosts x users): a node name, a pid or a token
    // would make a new series on every run. Several holders on one host as one user (shared
    // and --limit locks) are one series: the longest hold.
    family(
        "zklock_lock_held_seconds",
        "How long the lock has been held, by the longest holder of each host and user.",
        reports
            .iter()
            .flat_map(|r| {
                let mut by_holder: std::collections::BTreeMap<(String, String), f64> = Default::default();
                for h in &r.holders {
                    let key = (h.host.clone().unwrap_or_default(), h.user.clone().unwrap_or_default());
                    let longest = by_holder.entry(key).or_insert(0.0);
                    *longest = longest.max(h.seconds);
                }
                by_holder.into_iter().map(move |((host, user), seconds)| {
                    let labels =
                        format!("{},holder_host=\"{}\",holder_user=\"{}\"", path(r), label(&host), label(&user));
                    (labels, seconds)
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
