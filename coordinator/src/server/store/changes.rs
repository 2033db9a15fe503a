//! What one coordinator tells the others it changed, when several share one PostgreSQL
//! (issue 16): the payloads of `NOTIFY drover_changes`, written in the same transaction as
//! the change (PostgreSQL delivers a notification only when its transaction commits, and
//! never one of a transaction rolled back), and read by every replica's listener.
//!
//! A notification says only *what* to re-read, never the new state itself: the database
//! stays the one truth, a payload stays far below PostgreSQL's 8,000-byte limit, and a
//! replica that missed notifications (its listening connection dropped) re-reads
//! everything ([`Change::Resync`]) instead of trusting a partial stream.
//!
//! Text form, one change per payload: `m <generation>` (the fleet model: hosts, labels,
//! groups, releases, pins, holds, rollouts and the manifests they render; every such
//! write moves the database's model generation on by one), `r <host> <host> ...`
//! (reports stored), `h <host> ...` (host records changed without a model change:
//! certificate renewals, keys learned), `t` (admin tokens created or revoked). Host lists
//! longer than [`MAX_PAYLOAD`] are split over several payloads.

use drover_protocol::HostId;

/// The channel every replica listens on.
pub const CHANNEL: &str = "drover_changes";

/// The longest payload this module writes (PostgreSQL refuses 8,000 bytes and more).
pub const MAX_PAYLOAD: usize = 7_900;

/// One change another replica must re-read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The fleet model moved to this generation: re-read the model and the manifests
    /// written after the generation this replica holds.
    Model {
        /// The database's model generation after the change.
        generation: i64,
    },
    /// New reports of these hosts are stored.
    Reports(Vec<HostId>),
    /// These hosts' records changed (certificate renewed, key learned).
    Hosts(Vec<HostId>),
    /// Admin tokens were created or revoked.
    AdminTokens,
    /// Notifications may have been lost (the listening connection was re-established):
    /// re-read everything.
    Resync,
}

impl Change {
    /// The payloads that carry this change, each at most [`MAX_PAYLOAD`] bytes. `Resync`
    /// is never sent (a listener makes it up when it reconnects): no payloads.
    pub fn payloads(&self) -> Vec<String> {
        match self {
            Change::Model { generation } => vec![format!("m {generation}")],
            Change::Reports(hosts) => host_payloads('r', hosts),
            Change::Hosts(hosts) => host_payloads('h', hosts),
            Change::AdminTokens => vec!["t".to_owned()],
            Change::Resync => Vec::new(),
        }
    }

    /// Reads a payload back; `None` for one this version does not know (a newer replica
    /// wrote it during a rolling upgrade: the caller re-reads everything to be safe).
    pub fn parse(payload: &str) -> Option<Change> {
        let (kind, rest) = payload.split_once(' ').unwrap_or((payload, ""));
        let hosts = || -> Option<Vec<HostId>> {
            rest.split(' ')
                .filter(|host| !host.is_empty())
                .map(|host| host.parse().ok())
                .collect()
        };
        match kind {
            "m" => rest.parse().ok().map(|generation| Change::Model { generation }),
            "r" => hosts().map(Change::Reports),
            "h" => hosts().map(Change::Hosts),
            "t" if rest.is_empty() => Some(Change::AdminTokens),
            _ => None,
        }
    }
}

/// `<kind> <host> <host> ...`, split so that no payload passes [`MAX_PAYLOAD`]; none for
/// no hosts.
fn host_payloads(kind: char, hosts: &[HostId]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    for host in hosts {
        let host = host.as_str();
        if !current.is_empty() && current.len() + 1 + host.len() > MAX_PAYLOAD {
            payloads.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push(kind);
        }
        current.push(' ');
        current.push_str(host);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(count: usize) -> Vec<HostId> {
        (0..count)
            .map(|index| format!("host-{index:05}").parse().expect("valid host id"))
            .collect()
    }

    #[test]
    fn every_change_reads_back_as_written() {
        for change in [
            Change::Model { generation: 42 },
            Change::Reports(hosts(3)),
            Change::Hosts(hosts(1)),
            Change::AdminTokens,
        ] {
            let payloads = change.payloads();
            assert_eq!(payloads.len(), 1, "{change:?}");
            assert_eq!(Change::parse(&payloads[0]), Some(change));
        }
        assert!(Change::Resync.payloads().is_empty());
        assert!(Change::Reports(Vec::new()).payloads().is_empty());
    }

    #[test]
    fn long_host_lists_are_split_below_the_payload_limit_and_keep_every_host() {
        let many = hosts(5_000);
        let payloads = Change::Reports(many.clone()).payloads();
        assert!(payloads.len() > 1);
        let mut read = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= MAX_PAYLOAD, "{} bytes", payload.len());
            let Some(Change::Reports(hosts)) = Change::parse(payload) else {
                panic!("unreadable payload {payload:?}");
            };
            read.extend(hosts);
        }
        assert_eq!(read, many);
    }

    #[test]
    fn unknown_or_malformed_payloads_are_not_guessed() {
        for payload in ["", "x 1", "m", "m many", "r bad/host", "t extra", "m 1 2"] {
            assert_eq!(Change::parse(payload), None, "{payload:?}");
        }
    }
}
