//! `drover coordinators`: the replicas serving one database (PostgreSQL mode), which one
//! leads (runs the rollout driver and the manifest refresher), and when each was last
//! heard from. On SQLite it lists the one coordinator, which always leads.

use std::io::Write;

use drover_protocol::Timestamp;
use drover_protocol::api::ReplicaStatus;

use super::{Table, ago, emit, print_json};
use crate::cli::args::{Output, StatusArgs};
use crate::cli::client::AdminClient;
use crate::error::Error;

/// A replica not heard from for this long is shown as silent: three missed heartbeats.
const SILENT_AFTER_SECONDS: i64 = 15;

/// `drover coordinators`.
pub async fn coordinators(
    client: &AdminClient,
    args: &StatusArgs,
    now: Timestamp,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let replicas: Vec<ReplicaStatus> = client.get("/v1/admin/coordinators").await?;
    match args.output {
        Output::Json => print_json(out, &replicas),
        Output::Table => emit(out, &coordinators_table(&replicas, now)),
    }
}

/// One line per replica, the leader marked; a replica silent for three heartbeats says
/// so (it stopped, or cannot reach the database).
fn coordinators_table(replicas: &[ReplicaStatus], now: Timestamp) -> String {
    let mut table = Table::new(&["ID", "ADDRESS", "VERSION", "LEADER", "HEARTBEAT", "STARTED"]);
    for replica in replicas {
        let silent = now.unix() - replica.heartbeat_at.unix() > SILENT_AFTER_SECONDS;
        table.row(vec![
            replica.id.clone(),
            replica.address.clone(),
            replica.version.clone(),
            if replica.leader { "yes" } else { "-" }.to_owned(),
            format!(
                "{}{}",
                ago(Some(replica.heartbeat_at), now),
                if silent { " (silent)" } else { "" }
            ),
            ago(Some(replica.started_at), now),
        ]);
    }
    let mut text = table.render();
    if !replicas.iter().any(|replica| replica.leader) {
        text.push_str(
            "\nNo replica leads right now: rollouts wait until one takes the lead (within seconds of a leader's loss).\n",
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(id: &str, leader: bool, heartbeat_ago: i64, now: Timestamp) -> ReplicaStatus {
        ReplicaStatus {
            id: id.to_owned(),
            address: format!("https://{id}:8443"),
            version: "0.1.0".to_owned(),
            started_at: Timestamp::from_unix(now.unix() - 3_600),
            heartbeat_at: Timestamp::from_unix(now.unix() - heartbeat_ago),
            leader,
        }
    }

    #[test]
    fn the_table_marks_the_leader_and_silent_replicas() {
        let now = Timestamp::from_unix(1_800_000_000);
        let text = coordinators_table(&[replica("a", true, 2, now), replica("b", false, 60, now)], now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID"), "{text}");
        assert!(lines[1].contains("yes") && !lines[1].contains("silent"), "{text}");
        assert!(lines[2].contains("(silent)"), "{text}");
        assert!(!text.contains("No replica leads"), "{text}");
    }

    #[test]
    fn a_fleet_without_a_leader_says_rollouts_wait() {
        let now = Timestamp::from_unix(1_800_000_000);
        let text = coordinators_table(&[replica("a", false, 1, now)], now);
        assert!(text.contains("No replica leads right now"), "{text}");
    }
}
