//! Output of the client verbs: readable tables by default, JSON with snake_case keys for
//! scripts (`-o json`).

use base64::Engine as _;
use clap::ValueEnum;
use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    /// Readable text and tables.
    #[default]
    Table,
    /// JSON with snake_case keys, for scripts.
    Json,
}

/// `camelCase` (or `snake_case`) to `snake_case`.
pub fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for (i, c) in key.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Renames every object key to snake_case, except inside the fields named in `data_maps`:
/// those are maps keyed by data (member ids, partitions), whose keys must stay as they are.
pub fn snake_keys(value: Value, data_maps: &[&str]) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (key, inner) in map {
                let inner = if data_maps.contains(&key.as_str()) {
                    inner
                } else {
                    snake_keys(inner, data_maps)
                };
                out.insert(snake_case(&key), inner);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| snake_keys(v, data_maps))
                .collect(),
        ),
        other => other,
    }
}

/// Columns padded to their widest cell, two spaces apart; no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths.get(i).copied().unwrap_or(0);
                s.push_str(&" ".repeat(pad.saturating_sub(cell.chars().count())));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A JSON value as a table cell: strings without quotes, absent as `-`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(true) => "yes".to_string(),
        Value::Bool(false) => "no".to_string(),
        other => other.to_string(),
    }
}

/// A value for a reader: its text when it is UTF-8, else base64 marked as such.
/// Returns (`utf8` or `base64`, the text).
pub fn readable_value(bytes: &[u8]) -> (&'static str, String) {
    match std::str::from_utf8(bytes) {
        Ok(text) => ("utf8", text.to_string()),
        Err(_) => (
            "base64",
            base64::engine::general_purpose::STANDARD.encode(bytes),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_snake_case_but_data_keys_stay() {
        let camel = serde_json::json!({
            "viewVersion": 3,
            "members": [{"httpAddr": "a", "partitionsOwned": 2}],
            "hintsHeld": {"nodeA": 1},
            "base_epoch": 1,
        });
        let snake = snake_keys(camel, &["hintsHeld"]);
        assert_eq!(
            snake,
            serde_json::json!({
                "view_version": 3,
                "members": [{"http_addr": "a", "partitions_owned": 2}],
                "hints_held": {"nodeA": 1},
                "base_epoch": 1,
            })
        );
    }

    #[test]
    fn tables_line_up_their_columns() {
        let t = table(
            &["ID", "ALIVE"],
            &[
                vec!["node-0".into(), "yes".into()],
                vec!["n".into(), "no".into()],
            ],
        );
        assert_eq!(t, "ID      ALIVE\nnode-0  yes\nn       no\n");
    }

    #[test]
    fn values_are_text_when_utf8_and_marked_base64_otherwise() {
        assert_eq!(readable_value(b"hello"), ("utf8", "hello".to_string()));
        assert_eq!(
            readable_value(&[0xff, 0x00]),
            ("base64", "/wA=".to_string())
        );
    }
}
