//! The operator commands that talk to the coordinator's admin API, one function per
//! command, each printing a table for people or JSON (the API's own types) for scripts.
//!
//! Text that came from hosts (facts, errors, event messages) goes through
//! [`crate::text::printable`] before it reaches a terminal: a hostile host must not be
//! able to forge lines or repaint the operator's screen.

mod admin_tokens;
mod coordinators;
mod desired;
mod history;
mod hosts;
mod release;
mod rollout;
mod watch;

use std::io::{IsTerminal as _, Write};
use std::path::PathBuf;

use drover_protocol::Timestamp;
use serde::Serialize;

pub use admin_tokens::{admin_token_create, admin_token_list, admin_token_revoke};
pub use coordinators::coordinators;
pub use desired::{HoldChange, hold, pin, pins, status, unpin};
pub use history::history;
pub use hosts::{
    groups_create, groups_delete, groups_list, hosts_history, hosts_label, hosts_list, hosts_remove, hosts_show,
    token_create,
};
pub use release::{read_spec, release_create, release_list};
pub use rollout::rollout;

use crate::error::Error;
use crate::text::printable;

/// The error of a failed write to stdout.
pub(crate) fn stdout_error(source: std::io::Error) -> Error {
    Error::Io {
        operation: "writing",
        path: PathBuf::from("stdout"),
        source,
    }
}

/// Writes text to stdout.
pub(crate) fn emit(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    out.write_all(text.as_bytes()).map_err(stdout_error)
}

/// Writes a value as pretty JSON and a newline.
pub(crate) fn print_json<T: Serialize>(out: &mut dyn Write, value: &T) -> Result<(), Error> {
    let mut text = serde_json::to_vec_pretty(value).expect("API types serialize");
    text.push(b'\n');
    out.write_all(&text).map_err(stdout_error)
}

/// Aligned columns with a header row; cells are made printable, and the last column is
/// not padded (no trailing spaces).
#[derive(Debug)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub(crate) fn new(headers: &[&str]) -> Table {
        Table {
            rows: vec![headers.iter().map(|header| (*header).to_owned()).collect()],
        }
    }

    /// Adds a row.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|cell| printable(cell)).collect());
    }

    /// The table as text, one line per row.
    pub(crate) fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if column + 1 < row.len() {
                    let padding = widths[column] - cell.chars().count();
                    line.extend(std::iter::repeat_n(' ', padding));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// How long ago `then` was, in the largest whole unit: `12s ago`, `5m ago`, `3d ago`.
pub(crate) fn ago(then: Option<Timestamp>, now: Timestamp) -> String {
    let Some(then) = then else {
        return "never".into();
    };
    let seconds = now.unix() - then.unix();
    if seconds < 0 {
        return "just now".into();
    }
    let (amount, unit) = match seconds {
        0..60 => (seconds, "s"),
        60..3600 => (seconds / 60, "m"),
        3600..86_400 => (seconds / 3600, "h"),
        _ => (seconds / 86_400, "d"),
    };
    format!("{amount}{unit} ago")
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `1 host`, `3 hosts`, `no host`.
pub(crate) fn hosts_count(count: usize) -> String {
    match count {
        0 => "no host".into(),
        1 => "1 host".into(),
        _ => format!("{count} hosts"),
    }
}

/// Progress of a long transfer on stderr: a line rewritten in place on a terminal, or a
/// line at every quarter otherwise (logs stay short).
#[derive(Debug)]
pub(crate) struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    shown: Option<u64>,
    terminal: bool,
    finished: bool,
}

impl Progress {
    /// Starts reporting `label` (e.g. `uploading web.tar.gz`) of `total` bytes.
    pub(crate) fn new(label: String, total: Option<u64>) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        Progress {
            label,
            total,
            done: 0,
            // Off a terminal, the first line is at 25%.
            shown: (!terminal).then_some(0),
            terminal,
            finished: false,
        }
    }

    /// Counts `bytes` more; reaching the total finishes.
    pub(crate) fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        let Some(total) = self.total.filter(|total| *total > 0) else {
            return;
        };
        if self.done >= total {
            self.finish();
            return;
        }
        let percent = (self.done.min(total) * 100 / total).min(100);
        let step = if self.terminal { 1 } else { 25 };
        let due = match self.shown {
            None => true,
            Some(shown) => percent / step > shown / step,
        };
        if due && (percent < 100 || self.terminal) {
            self.show(percent);
        }
    }

    fn show(&mut self, percent: u64) {
        self.shown = Some(percent);
        let total = self
            .total
            .map_or_else(String::new, |total| format!(" of {}", human_size(total)));
        let text = format!("{}: {percent:>3}% ({}{total})", self.label, human_size(self.done));
        let mut stderr = std::io::stderr().lock();
        // Progress is a courtesy: a closed stderr must not fail the command.
        let _ = if self.terminal {
            write!(stderr, "\r{text}")
        } else {
            writeln!(stderr, "{text}")
        };
        let _ = stderr.flush();
    }

    /// Reports the end (once).
    pub(crate) fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        match self.total {
            Some(_) => {
                if self.shown != Some(100) || !self.terminal {
                    self.show(100);
                }
            }
            None => {
                let _ = writeln!(std::io::stderr(), "{}: {}", self.label, human_size(self.done));
                return;
            }
        }
        if self.terminal {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// The `?reason=...` of a change whose request body has no reason field (nothing when
/// there is no reason; `--reason` was checked when the command line was parsed).
pub(crate) fn reason_query(reason: &Option<String>) -> String {
    drover_protocol::api::ChangeReason {
        reason: reason.clone().filter(|reason| !reason.is_empty()),
    }
    .to_query()
}

/// Percent-encodes a path segment (group names are checked only by the coordinator).
pub(crate) fn path_segment(text: &str) -> String {
    let mut encoded = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_stay_on_their_lines() {
        let mut table = Table::new(&["HOST", "LABELS"]);
        table.row(vec!["web-01".into(), "env=prod".into()]);
        table.row(vec!["a".into(), "evil\nline".into()]);
        assert_eq!(
            table.render(),
            "HOST    LABELS\nweb-01  env=prod\na       evil\\nline\n"
        );
    }

    #[test]
    fn times_and_sizes_for_people() {
        let now = Timestamp::from_unix(1_000_000);
        assert_eq!(ago(None, now), "never");
        assert_eq!(ago(Some(Timestamp::from_unix(999_988)), now), "12s ago");
        assert_eq!(ago(Some(Timestamp::from_unix(1_000_000 - 7200)), now), "2h ago");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(12 * 1024 * 1024), "12.0 MiB");
        assert_eq!(hosts_count(0), "no host");
        assert_eq!(hosts_count(2), "2 hosts");
        assert_eq!(path_segment("prod-eu/x y"), "prod-eu%2Fx%20y");
    }
}
