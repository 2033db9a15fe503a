//! The reconcile decision, pure: `plan(desired, observed, now) -> Vec<Step>`. What the host
//! should run (a verified manifest) against what it has (releases on disk, the artifact
//! cache, what runs, what failed) gives the ordered steps that close the gap. No I/O, no
//! clock: the executor does the steps and journals them; this is where the rules live.
//!
//! Rules:
//! - a held manifest yields no step: the host keeps running what it runs;
//! - an app already running its desired version yields no step;
//! - a version remembered as bad (it failed health here) is not retried while it stays
//!   the desired one; a new desired version clears that;
//! - a version whose install failed (before it ever ran) is not tried again before its
//!   journaled retry time (growing back-off, [`crate::backoff::install_retry`]);
//! - otherwise: fetch the artifact unless cached, stage it unless staged, activate it,
//!   then prune old releases down to the spec's `keep_releases`;
//! - apps the manifest does not list are not managed and get no step.

use std::collections::{BTreeMap, BTreeSet};

use drover_protocol::{AppName, AppRelease, Digest, Manifest, Timestamp, Version};

/// What the host has, per app.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedApp {
    /// The release `current` points at, if any.
    pub current: Option<Version>,
    /// Release directories complete on disk.
    pub staged: BTreeSet<Version>,
    /// Versions that failed health here.
    pub bad: BTreeSet<Version>,
    /// A version whose install failed, and when it may be tried again.
    pub retry: Option<(Version, Timestamp)>,
}

impl ObservedApp {
    /// Whether `version` waits out the back-off of a failed install at `now`.
    fn waits(&self, version: &Version, now: Timestamp) -> bool {
        self.retry
            .as_ref()
            .is_some_and(|(failed, at)| failed == version && *at > now)
    }
}

/// What the host has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Per app.
    pub apps: BTreeMap<AppName, ObservedApp>,
    /// Verified artifacts in the cache.
    pub cached: BTreeSet<Digest>,
}

/// One step of a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Download and verify the release's artifact.
    Fetch { app: AppName, release: AppRelease },
    /// Unpack it beside the running release.
    Stage { app: AppName, release: AppRelease },
    /// Switch to it, restart the unit, check health (roll back on failure).
    Activate { app: AppName, release: AppRelease },
    /// Delete releases beyond the newest `keep`, never the current one.
    Prune { app: AppName, keep: u32 },
}

/// The steps that take the host from `observed` to `desired` at `now`, in order.
pub fn plan(desired: &Manifest, observed: &Observed, now: Timestamp) -> Vec<Step> {
    if desired.hold {
        return Vec::new();
    }
    let nothing = ObservedApp::default();
    let mut steps = Vec::new();
    for (app, release) in &desired.apps {
        let have = observed.apps.get(app).unwrap_or(&nothing);
        if have.current.as_ref() == Some(&release.version)
            || have.bad.contains(&release.version)
            || have.waits(&release.version, now)
        {
            continue;
        }
        if !have.staged.contains(&release.version) {
            if !observed.cached.contains(release.artifact.digest()) {
                steps.push(Step::Fetch {
                    app: app.clone(),
                    release: release.clone(),
                });
            }
            steps.push(Step::Stage {
                app: app.clone(),
                release: release.clone(),
            });
        }
        steps.push(Step::Activate {
            app: app.clone(),
            release: release.clone(),
        });
        steps.push(Step::Prune {
            app: app.clone(),
            keep: release.spec.keep_releases.get(),
        });
    }
    steps
}

/// When the next failed install of a desired version may be tried again, if any waits:
/// the time the reconciler sleeps until (it also wakes for a new manifest).
pub fn next_retry(desired: &Manifest, observed: &Observed) -> Option<Timestamp> {
    if desired.hold {
        return None;
    }
    desired
        .apps
        .iter()
        .filter_map(|(app, release)| {
            let have = observed.apps.get(app)?;
            let (failed, at) = have.retry.as_ref()?;
            (failed == &release.version && have.current.as_ref() != Some(failed)).then_some(*at)
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_protocol::manifest::{HttpUrl, MANIFEST_SCHEMA};
    use drover_protocol::{Artifact, Timestamp};
    use proptest::prelude::*;

    fn release(version: &str) -> AppRelease {
        let digest = Digest::of(version.as_bytes());
        AppRelease {
            version: version.parse().expect("version"),
            artifact: Artifact::Tarball {
                url: HttpUrl::try_from(format!("https://c/v1/artifacts/{digest}")).expect("url"),
                digest,
                size: 1,
            },
            spec: serde_json::from_str(r#"{"service":{"command":["bin/app"]}}"#).expect("spec"),
        }
    }

    fn manifest(apps: &[(&str, &str)], hold: bool) -> Manifest {
        Manifest {
            schema: MANIFEST_SCHEMA,
            host: "web-01".parse().expect("host"),
            serial: 1,
            issued_at: Timestamp::EPOCH,
            expires_at: Timestamp::from_unix(1),
            hold,
            apps: apps
                .iter()
                .map(|(app, version)| (app.parse().expect("app"), release(version)))
                .collect(),
        }
    }

    fn app(name: &str) -> AppName {
        name.parse().expect("app")
    }

    fn kinds(steps: &[Step]) -> Vec<&'static str> {
        steps
            .iter()
            .map(|step| match step {
                Step::Fetch { .. } => "fetch",
                Step::Stage { .. } => "stage",
                Step::Activate { .. } => "activate",
                Step::Prune { .. } => "prune",
            })
            .collect()
    }

    #[test]
    fn a_new_release_is_fetched_staged_activated_and_pruned() {
        let steps = plan(
            &manifest(&[("web", "2")], false),
            &Observed::default(),
            Timestamp::EPOCH,
        );
        assert_eq!(kinds(&steps), ["fetch", "stage", "activate", "prune"]);
        assert!(matches!(&steps[3], Step::Prune { keep: 3, .. }));
    }

    #[test]
    fn cached_and_staged_releases_skip_their_steps() {
        let desired = manifest(&[("web", "2")], false);
        let mut observed = Observed::default();
        observed.cached.insert(Digest::of(b"2"));
        assert_eq!(
            kinds(&plan(&desired, &observed, Timestamp::EPOCH)),
            ["stage", "activate", "prune"]
        );
        observed
            .apps
            .entry(app("web"))
            .or_default()
            .staged
            .insert("2".parse().expect("version"));
        assert_eq!(
            kinds(&plan(&desired, &observed, Timestamp::EPOCH)),
            ["activate", "prune"],
            "a rollback to a staged release"
        );
    }

    #[test]
    fn the_running_version_and_held_hosts_get_no_steps() {
        let mut observed = Observed::default();
        observed.apps.entry(app("web")).or_default().current = Some("2".parse().expect("version"));
        assert!(plan(&manifest(&[("web", "2")], false), &observed, Timestamp::EPOCH).is_empty());
        assert!(
            plan(&manifest(&[("web", "3")], true), &observed, Timestamp::EPOCH).is_empty(),
            "hold is a kill switch"
        );
    }

    #[test]
    fn a_bad_version_is_not_retried_until_the_desired_version_changes() {
        let mut observed = Observed::default();
        let web = observed.apps.entry(app("web")).or_default();
        web.current = Some("2".parse().expect("version"));
        web.bad.insert("3".parse().expect("version"));
        assert!(plan(&manifest(&[("web", "3")], false), &observed, Timestamp::EPOCH).is_empty());
        assert_eq!(
            kinds(&plan(&manifest(&[("web", "4")], false), &observed, Timestamp::EPOCH)),
            ["fetch", "stage", "activate", "prune"]
        );
    }

    #[test]
    fn a_failed_install_waits_for_its_retry_time_and_a_new_version_does_not() {
        let mut observed = Observed::default();
        observed.apps.entry(app("web")).or_default().retry =
            Some(("3".parse().expect("version"), Timestamp::from_unix(100)));
        let wanted = manifest(&[("web", "3")], false);
        assert!(
            plan(&wanted, &observed, Timestamp::from_unix(99)).is_empty(),
            "backing off"
        );
        assert_eq!(next_retry(&wanted, &observed), Some(Timestamp::from_unix(100)));
        assert_eq!(
            kinds(&plan(&wanted, &observed, Timestamp::from_unix(100))),
            ["fetch", "stage", "activate", "prune"],
            "tried again once the time has come"
        );
        let newer = manifest(&[("web", "4")], false);
        assert_eq!(
            kinds(&plan(&newer, &observed, Timestamp::from_unix(0))),
            ["fetch", "stage", "activate", "prune"],
            "another desired version is tried at once"
        );
        assert_eq!(next_retry(&newer, &observed), None);
    }

    proptest! {
        #[test]
        fn steps_are_ordered_and_never_touch_bad_or_running_versions(
            wanted in proptest::collection::btree_map("[a-c]", 1u8..5, 0..3),
            running in proptest::collection::btree_map("[a-c]", 1u8..5, 0..3),
            bad in proptest::collection::btree_set(("[a-c]", 1u8..5), 0..4),
            staged in proptest::collection::btree_set(("[a-c]", 1u8..5), 0..4),
            hold in any::<bool>(),
        ) {
            let apps: Vec<(String, String)> = wanted.iter().map(|(a, v)| (a.clone(), v.to_string())).collect();
            let refs: Vec<(&str, &str)> = apps.iter().map(|(a, v)| (a.as_str(), v.as_str())).collect();
            let desired = manifest(&refs, hold);
            let mut observed = Observed::default();
            for (name, version) in &running {
                observed.apps.entry(app(name)).or_default().current = Some(version.to_string().parse().expect("version"));
            }
            for (name, version) in &bad {
                observed.apps.entry(app(name)).or_default().bad.insert(version.to_string().parse().expect("version"));
            }
            for (name, version) in &staged {
                observed.apps.entry(app(name)).or_default().staged.insert(version.to_string().parse().expect("version"));
            }
            let steps = plan(&desired, &observed, Timestamp::EPOCH);
            if hold {
                prop_assert!(steps.is_empty());
            }
            for step in &steps {
                if let Step::Activate { app: name, release } = step {
                    let have = observed.apps.get(name).cloned().unwrap_or_default();
                    prop_assert!(!have.bad.contains(&release.version), "a bad version is never activated");
                    prop_assert!(have.current.as_ref() != Some(&release.version), "no restart of what runs");
                    prop_assert_eq!(&desired.apps[name].version, &release.version, "only the desired version");
                }
            }
            // Per app: fetch before stage before activate before prune.
            for name in desired.apps.keys() {
                let order: Vec<&str> = kinds(&steps)
                    .into_iter()
                    .zip(&steps)
                    .filter(|(_, step)| match step {
                        Step::Fetch { app: a, .. } | Step::Stage { app: a, .. } | Step::Activate { app: a, .. } | Step::Prune { app: a, .. } => a == name,
                    })
                    .map(|(kind, _)| kind)
                    .collect();
                let rank = |kind: &str| ["fetch", "stage", "activate", "prune"].iter().position(|k| *k == kind).expect("known");
                prop_assert!(order.windows(2).all(|pair| rank(pair[0]) < rank(pair[1])), "{:?}", order);
            }
        }
    }
}
