//! How the client shows answers to a person: tables, key/value blocks and
//! progress bars (drawn on stderr, and only when it is a terminal).

use std::time::{Duration, UNIX_EPOCH};

use comfy_table::{Table, presets};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// A table with `headers`, one row per item, columns taken by `cells`.
pub fn table<'a>(
    headers: &[&str],
    items: impl IntoIterator<Item = &'a Value>,
    cells: impl Fn(&Value) -> Vec<String>,
) -> String {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_header(headers.to_vec());
    for item in items {
        table.add_row(cells(item));
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table.to_string()
}

/// `name: value` lines, names aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(name, value)| format!("{name:width$}  {value}\n"))
        .collect()
}

/// The text of a JSON field; `-` when absent or null.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Milliseconds since the epoch as RFC 3339 (seconds).
pub fn millis(value: &Value) -> String {
    value.as_u64().map_or_else(
        || text(value),
        |ms| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
    )
}

/// A bar over `total` items, or a counter when the total is unknown.
pub fn progress(total: Option<u64>, what: &str) -> ProgressBar {
    match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({eta})")
                .expect("a valid template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {pos} {msg}").expect("a valid template"),
        ),
    }
    .with_message(what.to_owned())
}
