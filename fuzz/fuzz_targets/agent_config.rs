//! Fuzzes the agent's configuration: `agent.toml` text parsed as
//! `drover_agent::config::ConfigFile` (as `config::load` does) and validated with no
//! command-line overrides.
//!
//! Invariants: a configuration that validates has what the agent relies on without
//! checking again: an https coordinator URL, an absolute state directory, a poll interval
//! of 1 s to 1 h, a long poll of at most 300 s and a release size limit of at least 1 MiB.

#![no_main]

use drover_agent::config::{ConfigFile, Overrides, validate};
use drover_fuzz::debug;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = toml::from_str::<ConfigFile>(text);
    debug("parse", &parsed.as_ref().map(|_| "ok"));
    let Ok(file) = parsed else {
        return;
    };
    let validated = validate(file, &Overrides::default(), "fuzz-host");
    debug("validate", &validated);
    let Ok(config) = validated else {
        return;
    };
    // Every coordinator URL a valid config keeps is https, distinct, without a trailing
    // `/`, at most the protocol's number of them.
    assert!(
        config.coordinators.len() <= drover_protocol::coordinators::MAX_COORDINATORS,
        "{} coordinators",
        config.coordinators.len()
    );
    for (index, url) in config.coordinators.iter().enumerate() {
        assert!(
            url.starts_with("https://") && url.len() > "https://".len() && !url.ends_with('/'),
            "coordinator {url:?}"
        );
        assert!(!config.coordinators[..index].contains(url), "coordinator {url:?} twice");
    }
    assert!(config.state_dir.is_absolute(), "state_dir {:?}", config.state_dir);
    // The config compares whole seconds (milliseconds divided down), and so does this.
    let poll_secs = config.poll_interval.as_millis() / 1000;
    assert!(
        (1..=3600).contains(&poll_secs),
        "poll_interval {:?}",
        config.poll_interval
    );
    assert!(
        config.long_poll.as_millis() / 1000 <= 300,
        "long_poll {:?}",
        config.long_poll
    );
    assert!(
        config.max_release_size >= 1 << 20,
        "max_release_size {}",
        config.max_release_size
    );
});
