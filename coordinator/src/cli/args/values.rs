//! The value parsers of `drover`'s arguments (clap's `value_parser`s) and the values they
//! make: labels and label changes, `--since` and `--until`, `--who` and `--reason` (the last two with
//! the coordinator's own rules from `drover-protocol`, so a value it would refuse fails
//! here with exit 2 before anything is sent).

use drover_protocol::api::Labels;
use drover_protocol::{Duration, Timestamp};

/// One label change of `drover hosts label`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelChange {
    /// `key=value`
    Set(String, String),
    /// `key-`
    Remove(String),
}

/// The `--since` and `--until` of `drover history`: a time back from now, or an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// This long before now.
    Ago(Duration),
    /// From this instant.
    At(Timestamp),
}

impl When {
    /// The instant it names, given the command's clock reading.
    pub fn at(self, now: Timestamp) -> Timestamp {
        match self {
            When::Ago(duration) => now.minus(duration),
            When::At(at) => at,
        }
    }
}

/// Parses `--since` and `--until`: a duration back from now (`7d`) or an RFC 3339 instant.
pub fn parse_when(text: &str) -> Result<When, String> {
    if let Ok(duration) = text.parse::<Duration>() {
        return Ok(When::Ago(duration));
    }
    text.parse::<Timestamp>().map(When::At).map_err(|_| {
        format!("{text:?} is neither a duration (30m, 7d) nor an instant in RFC 3339 UTC (2026-12-01T00:00:00Z)")
    })
}

/// Parses `--who`, with the coordinator's rule ([`drover_protocol::api::check_who`]).
pub fn parse_who(text: &str) -> Result<String, String> {
    drover_protocol::api::check_who(text).map(|()| text.to_owned())
}

/// Parses `--reason` with the coordinator's rule ([`drover_protocol::api::check_reason`]),
/// so a reason it would refuse fails here (exit 2) before anything changes; the text is
/// trimmed, and blank means none.
pub fn parse_reason(text: &str) -> Result<String, String> {
    drover_protocol::api::check_reason(Some(text)).map(Option::unwrap_or_default)
}

/// Parses `k=v,k2=v2` (empty text: no labels). Keys and values are checked by the
/// coordinator; here only the shape.
pub fn parse_labels(text: &str) -> Result<Labels, String> {
    let mut labels = Labels::new();
    for pair in text.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!(
                "{pair:?} is not key=value (labels look like env=prod,region=eu)"
            ));
        };
        if key.is_empty() || value.is_empty() {
            return Err(format!("{pair:?}: a label needs a key and a value"));
        }
        if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(format!("label {key:?} is given twice"));
        }
    }
    Ok(labels)
}

/// Parses one change of `drover hosts label`: `key=value` or `key-`.
pub fn parse_label_change(text: &str) -> Result<LabelChange, String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => {
            Ok(LabelChange::Set(key.to_owned(), value.to_owned()))
        }
        Some(_) => Err(format!("{text:?}: a label needs a key and a value")),
        None => match text.strip_suffix('-') {
            Some(key) if !key.is_empty() => Ok(LabelChange::Remove(key.to_owned())),
            _ => Err(format!("{text:?} is neither key=value (set) nor key- (remove)")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_label_changes() {
        let labels = parse_labels("env=prod, region=eu").expect("labels");
        assert_eq!(labels.get("env").map(String::as_str), Some("prod"));
        assert_eq!(labels.len(), 2);
        assert!(parse_labels("").expect("empty").is_empty());
        for bad in ["env", "=prod", "env=", "env=a,env=b"] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_label_change("env=prod"),
            Ok(LabelChange::Set("env".into(), "prod".into()))
        );
        assert_eq!(parse_label_change("canary-"), Ok(LabelChange::Remove("canary".into())));
        for bad in ["env", "-", "=x", "env="] {
            assert!(parse_label_change(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn history_filters_and_reasons_parse_or_say_why_not() {
        let now: Timestamp = "2026-12-07T12:00:00Z".parse().expect("now");
        let since = parse_when("2h").expect("duration");
        assert_eq!(since.at(now), "2026-12-07T10:00:00Z".parse().expect("at"));
        let since = parse_when("2026-12-01T00:00:00Z").expect("instant");
        assert_eq!(since.at(now), "2026-12-01T00:00:00Z".parse().expect("at"));
        for bad in ["", "yesterday", "2026-12-01", "-2h"] {
            assert!(parse_when(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_who("alice"), Ok("alice".into()));
        assert!(parse_who("").is_err());
        assert!(parse_who("a\nb").is_err());
        assert_eq!(parse_reason("  moved to eu "), Ok("moved to eu".into()));
        assert_eq!(parse_reason("   "), Ok(String::new()));
        assert!(parse_reason(&"x".repeat(501)).is_err());
        assert!(parse_reason("two\nlines").is_err());
    }
}
