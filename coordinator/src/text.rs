//! Text that both programs put in front of people: network text made safe for a
//! terminal, an error with its causes on one line, labels as `key=value` pairs.

use drover_protocol::api::Labels;

/// An error and its causes on one line, without reqwest's own "error sending request
/// for url (...)" (the caller names the address) and without repeated parts.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = error.source();
    while let Some(current) = cause {
        let text = current.to_string();
        // hyper's "client error (Connect)" layer says nothing the next one does not.
        let wrapper = text.starts_with("client error (") && current.source().is_some();
        if !wrapper && !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        cause = current.source();
    }
    if parts.is_empty() {
        parts.push(error.to_string());
    }
    printable(&parts.join(": "))
}

/// Text from the network made safe for a terminal: control characters escaped, length
/// bounded, so a hostile answer cannot forge lines or repaint the screen.
pub fn printable(text: &str) -> String {
    let mut clean = String::new();
    for (count, c) in text.chars().enumerate() {
        if count >= 2000 {
            clean.push('…');
            break;
        }
        if c.is_control() {
            clean.extend(c.escape_default());
        } else {
            clean.push(c);
        }
    }
    clean
}

/// `env=prod,region=eu`, or `-` for none.
pub fn labels_text(labels: &Labels) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(printable("ok\n\u{1b}[2J"), "ok\\n\\u{1b}[2J");
    }
}
