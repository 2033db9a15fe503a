//! Fault-injection points for the crash tests: when `DROVER_AGENT_PAUSE_AT` names a
//! point, the agent writes that name to the file `DROVER_AGENT_PAUSE_MARKER` (default
//! `<state>/paused`) and stops there until it is killed. The end-to-end tests use it to
//! `kill -9` the agent at an exact step of an install (mid-download, mid-unpack, after
//! the switch before the restart, during health checks) and check that the next start
//! converges. Unset (always, in production) it costs one environment lookup per point.

use std::path::Path;

/// The points, in the order an install meets them.
pub const POINTS: [&str; 4] = ["mid-download", "mid-unpack", "after-switch", "during-health"];

/// Stops here forever if this point was asked for. Blocks the calling thread on purpose:
/// the process is about to be killed, and nothing else may move on.
pub fn pause_point(name: &str, state_dir: &Path) {
    if std::env::var("DROVER_AGENT_PAUSE_AT").ok().as_deref() != Some(name) {
        return;
    }
    let marker = std::env::var_os("DROVER_AGENT_PAUSE_MARKER").map_or_else(|| state_dir.join("paused"), Into::into);
    tracing::warn!("fault injection: paused at {name}; waiting to be killed");
    let _ = std::fs::write(&marker, name);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
