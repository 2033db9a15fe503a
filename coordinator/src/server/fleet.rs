//! The desired state of the fleet, in memory, and the pure decision of what each host
//! should run: most specific pin wins (host, then group, then fleet), and a hold on the
//! fleet, a matching group or the host freezes it.
//!
//! Nothing here does I/O: the coordinator mutates a `Fleet` only after the store has
//! committed the same change, and renders manifests from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use drover_protocol::api::{Labels, Release, Scope, selector_matches};
use drover_protocol::manifest::MANIFEST_SCHEMA;
use drover_protocol::{
    AppName, AppRelease, Artifact, Digest, Duration, HostId, Manifest, SigningKey, Timestamp, Version,
};

use crate::server::records::{HostRecord, Snapshot, StoredManifest};

/// What one host should run, by name: the hold flag and the version of each app.
/// Releases are immutable, so (app, version) fixes the artifact and spec; this small
/// value is what rendering compares, and the full [`Desired`] is built only to sign.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Resolved {
    /// Whether the host is held (applies no changes).
    pub hold: bool,
    /// The version of each app.
    pub versions: BTreeMap<AppName, Version>,
}

impl Resolved {
    /// A stable hash of the content, to tell a real change from a refresh.
    pub fn content_hash(&self) -> String {
        crate::server::pki::sha256_hex(&serde_json::to_vec(self).expect("resolved state serializes"))
    }
}

/// What one host should run, in full: what its manifest carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Whether the host is held (applies no changes).
    pub hold: bool,
    /// The release of each app.
    pub apps: BTreeMap<AppName, AppRelease>,
}

/// The fleet's desired state.
#[derive(Debug, Default)]
pub struct Fleet {
    /// Every host ever enrolled; removed ones have no certificate.
    pub hosts: BTreeMap<HostId, HostRecord>,
    /// Groups: name to selector.
    pub groups: BTreeMap<String, Labels>,
    /// Pins: (app, scope) to version.
    pub pins: BTreeMap<(AppName, Scope), Version>,
    /// Held scopes.
    pub holds: BTreeSet<Scope>,
    /// Releases by (app, version).
    pub releases: HashMap<(AppName, Version), Release>,
}

impl Fleet {
    /// The fleet as loaded from the store.
    pub fn from_snapshot(snapshot: &Snapshot) -> Fleet {
        Fleet {
            hosts: snapshot
                .hosts
                .iter()
                .map(|host| (host.id.clone(), host.clone()))
                .collect(),
            groups: snapshot.groups.clone(),
            pins: snapshot.pins.clone(),
            holds: snapshot.holds.clone(),
            releases: snapshot
                .releases
                .iter()
                .map(|release| ((release.app.clone(), release.version.clone()), release.clone()))
                .collect(),
        }
    }

    /// Hosts that are enrolled now (not removed).
    pub fn active_hosts(&self) -> impl Iterator<Item = &HostRecord> {
        self.hosts.values().filter(|host| host.is_active())
    }

    /// The groups whose selector matches `labels`, by name.
    pub fn groups_of<'a>(&'a self, labels: &'a Labels) -> impl Iterator<Item = &'a str> + 'a {
        self.groups
            .iter()
            .filter(move |(_, selector)| selector_matches(selector, labels))
            .map(|(name, _)| name.as_str())
    }

    /// The active hosts a scope covers.
    pub fn hosts_in(&self, scope: &Scope) -> Vec<HostId> {
        self.active_hosts()
            .filter(|host| self.covers(scope, host))
            .map(|host| host.id.clone())
            .collect()
    }

    fn covers(&self, scope: &Scope, host: &HostRecord) -> bool {
        match scope {
            Scope::Fleet => true,
            Scope::Group(name) => self
                .groups
                .get(name)
                .is_some_and(|selector| selector_matches(selector, &host.labels)),
            Scope::Host(id) => id == &host.id,
        }
    }

    /// What `host` should run. For each app: its host pin, else the pin of the first
    /// matching group by name, else the fleet pin. Held when any covering scope is held.
    pub fn desired(&self, host: &HostRecord) -> Desired {
        self.expand(&self.resolve(host))
    }

    /// The full releases of a resolved state.
    pub fn expand(&self, resolved: &Resolved) -> Desired {
        let apps = resolved
            .versions
            .iter()
            .filter_map(|(app, version)| {
                let release = self.releases.get(&(app.clone(), version.clone()))?;
                let release = AppRelease {
                    version: version.clone(),
                    artifact: release.artifact.clone(),
                    spec: release.spec.clone(),
                };
                Some((app.clone(), release))
            })
            .collect();
        Desired {
            hold: resolved.hold,
            apps,
        }
    }

    /// The tarball digests of a resolved state (what the host may download from the
    /// coordinator; images come from their registry).
    pub fn digests(&self, resolved: &Resolved) -> BTreeSet<Digest> {
        resolved
            .versions
            .iter()
            .filter_map(|(app, version)| self.releases.get(&(app.clone(), version.clone())))
            .filter_map(|release| match &release.artifact {
                Artifact::Tarball { digest, .. } => Some(digest.clone()),
                Artifact::Oci { .. } | Artifact::OciTarball { .. } => None,
            })
            .collect()
    }

    /// What `host` should run, by name (see [`Fleet::desired`] for the rules).
    pub fn resolve(&self, host: &HostRecord) -> Resolved {
        let groups: Vec<&str> = self.groups_of(&host.labels).collect();
        let hold = self.holds.iter().any(|scope| self.covers(scope, host));
        let mut chosen: BTreeMap<&AppName, (u8, &Version)> = BTreeMap::new();
        for ((app, scope), version) in &self.pins {
            let rank = match scope {
                Scope::Host(id) if id == &host.id => 0,
                // Groups rank by their position in name order, after hosts and before the fleet.
                Scope::Group(name) => match groups.iter().position(|group| group == name) {
                    Some(index) => 1 + u8::try_from(index.min(200)).expect("bounded"),
                    None => continue,
                },
                Scope::Fleet => u8::MAX,
                Scope::Host(_) => continue,
            };
            let entry = chosen.entry(app).or_insert((rank, version));
            if rank < entry.0 {
                *entry = (rank, version);
            }
        }
        let versions = chosen
            .into_iter()
            .filter(|(app, (_, version))| self.releases.contains_key(&((*app).clone(), (*version).clone())))
            .map(|(app, (_, version))| (app.clone(), version.clone()))
            .collect();
        Resolved { hold, versions }
    }
}

/// Signs `resolved` (expanded from `fleet`) as `host`'s manifest with `serial`. The full
/// manifest exists only for the signing; the envelope is kept at its exact size.
pub fn sign_manifest(
    fleet: &Fleet,
    host: &HostId,
    serial: u64,
    resolved: &Resolved,
    now: Timestamp,
    ttl: Duration,
    key: &SigningKey,
) -> StoredManifest {
    let manifest = Manifest {
        schema: MANIFEST_SCHEMA,
        host: host.clone(),
        serial,
        issued_at: now,
        expires_at: now.plus(ttl),
        hold: resolved.hold,
        apps: fleet.expand(resolved).apps,
    };
    let mut envelope = manifest.sign(&[key]);
    envelope.shrink_to_fit();
    StoredManifest {
        host: host.clone(),
        serial,
        envelope: envelope.into(),
        content_hash: resolved.content_hash(),
        issued_at: manifest.issued_at,
        expires_at: manifest.expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, labels: &[(&str, &str)]) -> HostRecord {
        HostRecord {
            id: id.parse().expect("host id"),
            labels: labels
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
            cert_sha256: Some("x".into()),
            key_sha256: Some("k".into()),
            cert_not_after: None,
            joined_at: Timestamp::EPOCH,
        }
    }

    fn release(app: &str, version: &str) -> Release {
        Release {
            app: app.parse().expect("app"),
            version: version.parse().expect("version"),
            artifact: Artifact::Tarball {
                url: drover_protocol::manifest::HttpUrl::try_from(format!("https://c/{app}/{version}")).expect("url"),
                digest: Digest::of(version.as_bytes()),
                size: 1,
            },
            spec: serde_json::from_str(r#"{"service":{"command":["x"]}}"#).expect("spec"),
            created_at: Timestamp::EPOCH,
        }
    }

    fn fleet() -> Fleet {
        let mut fleet = Fleet::default();
        for version in ["1", "2", "3", "4"] {
            let release = release("web", version);
            fleet
                .releases
                .insert((release.app.clone(), release.version.clone()), release);
        }
        fleet
            .groups
            .insert("eu".into(), [("region".to_owned(), "eu".to_owned())].into());
        fleet
            .groups
            .insert("prod".into(), [("env".to_owned(), "prod".to_owned())].into());
        fleet
    }

    fn pin(fleet: &mut Fleet, scope: Scope, version: &str) {
        fleet
            .pins
            .insert(("web".parse().expect("app"), scope), version.parse().expect("version"));
    }

    fn version_of(fleet: &Fleet, host: &HostRecord) -> Option<String> {
        fleet
            .desired(host)
            .apps
            .get(&"web".parse::<AppName>().expect("app"))
            .map(|release| release.version.to_string())
    }

    #[test]
    fn most_specific_pin_wins() {
        let mut fleet = fleet();
        let eu_prod = host("a", &[("region", "eu"), ("env", "prod")]);
        let us = host("b", &[("region", "us")]);
        assert_eq!(version_of(&fleet, &eu_prod), None, "no pin, no app");
        pin(&mut fleet, Scope::Fleet, "1");
        assert_eq!(version_of(&fleet, &us).as_deref(), Some("1"));
        pin(&mut fleet, Scope::Group("prod".into()), "2");
        assert_eq!(version_of(&fleet, &eu_prod).as_deref(), Some("2"));
        pin(&mut fleet, Scope::Group("eu".into()), "3");
        assert_eq!(
            version_of(&fleet, &eu_prod).as_deref(),
            Some("3"),
            "groups rank by name: eu before prod"
        );
        pin(&mut fleet, Scope::Host("a".parse().expect("host")), "4");
        assert_eq!(version_of(&fleet, &eu_prod).as_deref(), Some("4"));
        assert_eq!(version_of(&fleet, &us).as_deref(), Some("1"));
    }

    #[test]
    fn holds_cover_their_scope_only() {
        let mut fleet = fleet();
        let eu = host("a", &[("region", "eu")]);
        let us = host("b", &[("region", "us")]);
        fleet.holds.insert(Scope::Group("eu".into()));
        assert!(fleet.desired(&eu).hold);
        assert!(!fleet.desired(&us).hold);
        fleet.holds.insert(Scope::Fleet);
        assert!(fleet.desired(&us).hold);
    }

    #[test]
    fn content_hash_ignores_nothing_that_matters() {
        let mut fleet = fleet();
        let a = host("a", &[]);
        let before = fleet.resolve(&a).content_hash();
        pin(&mut fleet, Scope::Fleet, "1");
        let pinned = fleet.resolve(&a).content_hash();
        assert_ne!(before, pinned);
        fleet.holds.insert(Scope::Fleet);
        assert_ne!(pinned, fleet.resolve(&a).content_hash());
    }
}
