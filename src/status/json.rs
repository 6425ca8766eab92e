//! The versioned JSON document of `status --json` (format [`JSON_FORMAT`]).

use std::time::SystemTime;

use super::model::{rfc3339, LockReport, Report};

/// Version of the JSON document printed by `--json`.
pub const JSON_FORMAT: u32 = 1;

/// The reports as the JSON document, pretty-printed, with a final newline.
pub fn render_json(locks: Vec<LockReport>, now: SystemTime) -> String {
    let doc = Report { zklock_status: JSON_FORMAT, generated_at: rfc3339(now), locks };
    serde_json::to_string_pretty(&doc).expect("report serializes") + "\n"
}
