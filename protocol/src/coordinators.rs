//! The list of coordinator URLs an agent knows (issue 16: several coordinators over one
//! database): `coordinators = [...]` in `agent.toml`, and the join line `drover token
//! create --coordinators` prints (`drover-agent join URL,URL ...`). One rule for both
//! sides, so the coordinator never prints a join line the agent refuses.

/// The most coordinator URLs one agent keeps: a handful of replicas (or one
/// load-balanced URL) is the use; a longer list only lengthens a failover round.
pub const MAX_COORDINATORS: usize = 16;

/// The longest coordinator URL.
pub const MAX_COORDINATOR_URL_BYTES: usize = 2048;

/// One coordinator URL as agents use it: `https://`, a host, no whitespace, control
/// characters, `,` (the join line separates URLs with it), `?` or `#` (request paths are
/// appended to it), at most [`MAX_COORDINATOR_URL_BYTES`]. Returns it without trailing
/// `/`, the spelling every request path is appended to.
pub fn check_coordinator_url(text: &str) -> Result<String, String> {
    let trimmed = text.trim_end_matches('/');
    let rest = trimmed.strip_prefix("https://");
    let ok = rest.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && trimmed.len() <= MAX_COORDINATOR_URL_BYTES
        && !trimmed
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ',' | '?' | '#'));
    if ok {
        Ok(trimmed.to_owned())
    } else {
        Err(format!(
            "coordinator {text:?} must be an https:// URL (https://HOST[:PORT]) without spaces, ',', '?' or '#'"
        ))
    }
}

/// A whole list: 1 to [`MAX_COORDINATORS`] URLs, each as [`check_coordinator_url`]
/// says, none twice (compared without trailing `/`). Returns the normalised list in its
/// order (the first is tried first), or every problem found.
pub fn check_coordinator_urls<S: AsRef<str>>(urls: &[S]) -> Result<Vec<String>, Vec<String>> {
    let mut problems = Vec::new();
    let mut checked: Vec<String> = Vec::new();
    if urls.is_empty() {
        problems.push("the coordinator list is empty; name at least one https:// URL".to_owned());
    }
    if urls.len() > MAX_COORDINATORS {
        problems.push(format!(
            "{} coordinator URLs; at most {MAX_COORDINATORS} are allowed (behind a load balancer, one URL is enough)",
            urls.len()
        ));
    }
    for url in urls {
        match check_coordinator_url(url.as_ref()) {
            Ok(url) if checked.contains(&url) => problems.push(format!("coordinator {url:?} is listed twice")),
            Ok(url) => checked.push(url),
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coordinator_url_is_https_and_loses_its_trailing_slash() {
        assert_eq!(
            check_coordinator_url("https://a.example:8443/").as_deref(),
            Ok("https://a.example:8443")
        );
        assert_eq!(
            check_coordinator_url("https://lb.example/drover").as_deref(),
            Ok("https://lb.example/drover")
        );
        for bad in [
            "http://a.example",
            "https://",
            "https:///path",
            "https://a b",
            "https://a,https://b",
            "https://a/?x=1",
            "https://a/#x",
            "a.example:8443",
        ] {
            assert!(check_coordinator_url(bad).is_err(), "{bad}");
        }
        assert!(check_coordinator_url(&format!("https://{}", "a".repeat(MAX_COORDINATOR_URL_BYTES))).is_err());
    }

    #[test]
    fn a_list_is_one_to_sixteen_distinct_urls_and_every_problem_is_named() {
        assert_eq!(
            check_coordinator_urls(&["https://a:8443", "https://b:8443/"]),
            Ok(vec!["https://a:8443".to_owned(), "https://b:8443".to_owned()])
        );
        assert!(check_coordinator_urls::<&str>(&[]).is_err());
        let problems = check_coordinator_urls(&["https://a", "https://a/", "http://b"]).expect_err("bad");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("listed twice"), "{problems:?}");
        let many: Vec<String> = (0..=MAX_COORDINATORS)
            .map(|index| format!("https://c{index}"))
            .collect();
        let problems = check_coordinator_urls(&many).expect_err("too many");
        assert!(problems[0].contains("at most 16"), "{problems:?}");
    }
}
