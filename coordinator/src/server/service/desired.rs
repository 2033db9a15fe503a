//! Desired state: rendering and signing each host's manifest, publishing it to the
//! host's long-polls, and the operator's pins, holds and the refresher.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use drover_protocol::api::{ChangeResult, Pin, Scope};
use drover_protocol::manifest::{MAX_APPS, MAX_MANIFEST_BYTES};
use drover_protocol::{AppName, Duration, HostId, SigningKey, Timestamp, Version};

use super::admin::{Actor, Operator, check_reason};
use super::error::{During as _, ServiceError};
use super::{Coordinator, Model, Published};
use crate::server::fleet::{Fleet, Resolved, sign_manifest};
use crate::server::store::{HistoryRecord, HostRecord, StoredManifest};

/// Which hosts [`Coordinator::render`] re-signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RenderMode {
    /// Those whose desired state changed.
    Changed,
    /// Those that changed or expire within half their lifetime.
    Refresh,
    /// All given hosts (a join: the host gets a fresh serial whatever it ran before).
    Force,
}

/// What the rendering remembers per host: enough to tell a change from a no-op.
#[derive(Clone, Debug)]
pub(super) struct Rendered {
    pub(super) serial: u64,
    pub(super) content_hash: String,
    pub(super) expires_at: Timestamp,
}

impl Rendered {
    pub(super) fn of(manifest: &StoredManifest) -> Rendered {
        Rendered {
            serial: manifest.serial,
            content_hash: manifest.content_hash.clone(),
            expires_at: manifest.expires_at,
        }
    }
}

/// A history line for an operator's change of `scope`, found by `history --host` when the
/// scope is one host.
pub(super) fn manual_history(
    app: Option<&AppName>,
    scope: &Scope,
    what: String,
    actor: &Actor,
    at: Timestamp,
) -> HistoryRecord {
    HistoryRecord {
        app: app.cloned(),
        host: match scope {
            Scope::Host(host) => Some(host.clone()),
            Scope::Fleet | Scope::Group(_) => None,
        },
        rollout: None,
        at,
        who: actor.who.clone(),
        what,
        reason: actor.reason.clone(),
    }
}

pub(super) fn restore_pin(fleet: &mut Fleet, key: (AppName, Scope), previous: Option<Version>) {
    match previous {
        Some(version) => fleet.pins.insert(key, version),
        None => fleet.pins.remove(&key),
    };
}

/// Refuses a change that would give a host a signed manifest larger than agents accept
/// ([`MAX_MANIFEST_BYTES`]): that host's agent would refuse every manifest from then on,
/// changes to its other apps included, until the change was undone.
/// The same for the number of apps ([`MAX_APPS`]), which agents refuse past as well.
pub(super) fn check_manifests(fleet: &Fleet, manifests: &[StoredManifest], what: &str) -> Result<(), ServiceError> {
    for manifest in manifests {
        let apps = fleet
            .hosts
            .get(&manifest.host)
            .map_or(0, |host| fleet.resolve(host).versions.len());
        refuse_too_many_apps(what, &manifest.host, apps)?;
    }
    let over: Vec<&StoredManifest> = manifests
        .iter()
        .filter(|manifest| manifest.envelope.len() > MAX_MANIFEST_BYTES)
        .collect();
    match over.iter().max_by_key(|manifest| manifest.envelope.len()) {
        Some(largest) => refuse_oversized(what, &largest.host, largest.envelope.len(), over.len()),
        None => Ok(()),
    }
}

pub(super) fn refuse_too_many_apps(what: &str, host: &HostId, apps: usize) -> Result<(), ServiceError> {
    if apps <= MAX_APPS {
        return Ok(());
    }
    Err(ServiceError::Invalid(
        "too_many_apps",
        format!(
            "{what} would give host {host} {apps} apps, over the {MAX_APPS} agents accept in one manifest; nothing was changed"
        ),
    ))
}

pub(super) fn refuse_oversized(what: &str, host: &HostId, size: usize, hosts: usize) -> Result<(), ServiceError> {
    if size <= MAX_MANIFEST_BYTES {
        return Ok(());
    }
    let others = match hosts {
        0 | 1 => String::new(),
        more => format!(" (and {} more hosts over)", more - 1),
    };
    Err(ServiceError::Invalid(
        "manifest_too_large",
        format!(
            "{what} would give host {host} a signed manifest of {size} bytes{others}, over the {MAX_MANIFEST_BYTES} bytes agents accept; nothing was changed. Make the specs smaller (config_files content counts) or put fewer apps on those hosts"
        ),
    ))
}

/// The signed manifest sizes (and numbers of apps) active hosts would get with `app` at `target` (what a
/// rollout ends with), as an upper bound computed without signing: per distinct desired
/// state, with the longest host id among its hosts and the largest serial.
pub(super) fn manifests_with(fleet: &Fleet, app: &AppName, target: &Version) -> Vec<(HostId, usize, usize)> {
    let mut longest: HashMap<BTreeMap<AppName, Version>, &HostId> = HashMap::new();
    for host in fleet.active_hosts() {
        let mut resolved = fleet.resolve(host);
        resolved.versions.insert(app.clone(), target.clone());
        let entry = longest.entry(resolved.versions).or_insert(&host.id);
        if host.id.as_str().len() > entry.as_str().len() {
            *entry = &host.id;
        }
    }
    longest
        .into_iter()
        .map(|(versions, host)| {
            let resolved = Resolved { hold: false, versions };
            let manifest = drover_protocol::Manifest {
                schema: drover_protocol::MANIFEST_SCHEMA,
                host: host.clone(),
                serial: u64::MAX,
                issued_at: Timestamp::EPOCH,
                expires_at: Timestamp::EPOCH,
                hold: false,
                apps: fleet.expand(&resolved).apps,
            };
            // Timestamps print at a fixed width, so EPOCH stands for any of them.
            let size = drover_protocol::manifest::signed_size(manifest.to_payload().len(), 1);
            (host.clone(), size, manifest.apps.len())
        })
        .collect()
}

impl Coordinator {
    /// Renders `hosts` and returns the manifests that must be re-signed (see
    /// [`RenderMode`]), each with the host's serial + 1. Nothing is changed: the caller
    /// commits them to the store, then calls [`Coordinator::applied`].
    pub(super) fn render(
        &self,
        model: &Model,
        hosts: &[HostRecord],
        now: Timestamp,
        mode: RenderMode,
    ) -> Vec<StoredManifest> {
        let key: &SigningKey = &self.credentials.manifest_key;
        let ttl = self.config.manifest_ttl;
        let refresh_before = now.plus(Duration::from_millis(ttl.as_millis() / 2));
        let work: Vec<(&HostRecord, u64, Resolved)> = hosts
            .iter()
            .filter_map(|host| {
                let resolved = model.fleet.resolve(host);
                let previous = model.rendered.get(&host.id);
                let unchanged = previous.is_some_and(|previous| match mode {
                    RenderMode::Changed => previous.content_hash == resolved.content_hash(),
                    RenderMode::Refresh => {
                        previous.content_hash == resolved.content_hash() && previous.expires_at > refresh_before
                    }
                    RenderMode::Force => false,
                });
                (!unchanged).then(|| (host, previous.map_or(0, |previous| previous.serial) + 1, resolved))
            })
            .collect();
        // Signing is CPU-bound: off the async workers, and spread over the cores when
        // there is enough of it to be worth the threads. The full manifest of each host is
        // built inside the signing loop and dropped there, so a fleet-wide change never
        // holds 10,000 expanded manifests at once.
        let fleet = &model.fleet;
        let sign = |(host, serial, resolved): &(&HostRecord, u64, Resolved)| {
            sign_manifest(fleet, &host.id, *serial, resolved, now, ttl, key)
        };
        if work.len() < 512 {
            let signed: Vec<StoredManifest> = work.iter().map(sign).collect();
            self.metrics.manifests_signed.add(signed.len());
            return signed;
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(4);
        let chunk = work.len().div_ceil(threads).max(1);
        let signed: Vec<StoredManifest> = tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                let handles: Vec<_> = work
                    .chunks(chunk)
                    .map(|part| scope.spawn(move || part.iter().map(sign).collect::<Vec<_>>()))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|handle| handle.join().expect("signing thread"))
                    .collect()
            })
        });
        self.metrics.manifests_signed.add(signed.len());
        signed
    }

    /// Records committed manifests as rendered and publishes them: long-polls of those
    /// hosts wake now.
    pub(super) fn applied(&self, model: &mut Model, manifests: &[StoredManifest]) -> ChangeResult {
        for manifest in manifests {
            model.rendered.insert(manifest.host.clone(), Rendered::of(manifest));
        }
        self.publish(model, manifests);
        ChangeResult {
            hosts_changed: manifests.len(),
        }
    }

    pub(super) fn publish(&self, model: &Model, manifests: &[StoredManifest]) {
        let slots = self.slots.read();
        for manifest in manifests {
            let (Some(slot), Some(host)) = (slots.get(&manifest.host), model.fleet.hosts.get(&manifest.host)) else {
                continue;
            };
            let resolved = model.fleet.resolve(host);
            slot.manifest
                .send_replace(Arc::new(Published::of(manifest, &resolved, &model.fleet)));
        }
    }

    /// Re-renders the active hosts a scope covers after a change already applied to the
    /// model; returns the manifests to commit.
    pub(super) fn render_scope(&self, model: &Model, scopes: &[Scope], now: Timestamp) -> Vec<StoredManifest> {
        let mut ids: Vec<HostId> = scopes.iter().flat_map(|scope| model.fleet.hosts_in(scope)).collect();
        ids.sort();
        ids.dedup();
        let hosts: Vec<HostRecord> = ids.iter().filter_map(|id| model.fleet.hosts.get(id).cloned()).collect();
        self.render(model, &hosts, now, RenderMode::Changed)
    }

    pub(super) fn check_scope(fleet: &Fleet, scope: &Scope) -> Result<(), ServiceError> {
        match scope {
            Scope::Fleet => Ok(()),
            Scope::Group(name) if fleet.groups.contains_key(name) => Ok(()),
            Scope::Group(name) => Err(ServiceError::Unknown(
                "group_not_found",
                format!("no group named {name}; create it with drover groups create"),
            )),
            Scope::Host(id) => active_host(fleet, id).map(|_| ()),
        }
    }

    /// `drover pin`.
    pub async fn pin(&self, pin: Pin, operator: &Operator, reason: Option<&str>) -> Result<ChangeResult, ServiceError> {
        let actor = Actor::of(operator, check_reason(reason)?);
        let mut model = self.model().await;
        refuse_during_rollout(&model, &pin.app, "pin")?;
        Self::check_scope(&model.fleet, &pin.scope)?;
        if !model
            .fleet
            .releases
            .contains_key(&(pin.app.clone(), pin.version.clone()))
        {
            return Err(ServiceError::Unknown(
                "release_not_found",
                format!(
                    "no release {} {}; create it with drover release create",
                    pin.app, pin.version
                ),
            ));
        }
        let key = (pin.app.clone(), pin.scope.clone());
        let previous = model.fleet.pins.insert(key.clone(), pin.version.clone());
        let now = self.now();
        let manifests = self.render_scope(&model, std::slice::from_ref(&pin.scope), now);
        let history = [manual_history(
            Some(&pin.app),
            &pin.scope,
            format!("pinned {} {} for the {}", pin.app, pin.version, pin.scope),
            &actor,
            now,
        )];
        let what = format!("pinning {} {} for the {}", pin.app, pin.version, pin.scope);
        let outcome = match check_manifests(&model.fleet, &manifests, &what) {
            Ok(()) => self
                .store
                .change_pin(&pin.app, &pin.scope, Some(&pin.version), &history, &manifests)
                .await
                .during("pinning a release"),
            Err(error) => Err(error),
        };
        if let Err(error) = outcome {
            restore_pin(&mut model.fleet, key, previous);
            return Err(error);
        }
        Ok(self.applied(&mut model, &manifests))
    }

    /// `drover unpin`.
    pub async fn unpin(
        &self,
        app: AppName,
        scope: Scope,
        operator: &Operator,
        reason: Option<&str>,
    ) -> Result<ChangeResult, ServiceError> {
        let actor = Actor::of(operator, check_reason(reason)?);
        let mut model = self.model().await;
        refuse_during_rollout(&model, &app, "unpin")?;
        let key = (app.clone(), scope.clone());
        let Some(previous) = model.fleet.pins.remove(&key) else {
            return Err(ServiceError::Unknown(
                "pin_not_found",
                format!("{app} is not pinned for the {scope}"),
            ));
        };
        let now = self.now();
        let manifests = self.render_scope(&model, std::slice::from_ref(&scope), now);
        let history = [manual_history(
            Some(&app),
            &scope,
            format!("unpinned {app} for the {scope}"),
            &actor,
            now,
        )];
        if let Err(error) = self
            .store
            .change_pin(&app, &scope, None, &history, &manifests)
            .await
            .during("removing a pin")
        {
            restore_pin(&mut model.fleet, key, Some(previous));
            return Err(error);
        }
        Ok(self.applied(&mut model, &manifests))
    }

    /// `drover hold` / `drover unhold`. A hold stops every app on its hosts, so its
    /// history line belongs to no app and shows in every app's history. Holding what is
    /// held already (or lifting no hold) changes nothing and records nothing.
    pub async fn hold(
        &self,
        scope: Scope,
        held: bool,
        operator: &Operator,
        reason: Option<&str>,
    ) -> Result<ChangeResult, ServiceError> {
        let actor = Actor::of(operator, check_reason(reason)?);
        let mut model = self.model().await;
        Self::check_scope(&model.fleet, &scope)?;
        let changed = if held {
            model.fleet.holds.insert(scope.clone())
        } else {
            model.fleet.holds.remove(&scope)
        };
        if !changed {
            return Ok(ChangeResult { hosts_changed: 0 });
        }
        let now = self.now();
        let manifests = self.render_scope(&model, std::slice::from_ref(&scope), now);
        let verb = if held { "held" } else { "released the hold on" };
        let history = [manual_history(None, &scope, format!("{verb} the {scope}"), &actor, now)];
        if let Err(error) = self
            .store
            .change_hold(&scope, held, &history, &manifests)
            .await
            .during(if held { "holding" } else { "removing a hold" })
        {
            if held {
                model.fleet.holds.remove(&scope);
            } else {
                model.fleet.holds.insert(scope);
            }
            return Err(error);
        }
        Ok(self.applied(&mut model, &manifests))
    }

    /// Re-signs manifests that expire within half their lifetime.
    pub async fn refresh(&self) -> Result<usize, ServiceError> {
        let mut model = self.model().await;
        let hosts: Vec<HostRecord> = model.fleet.active_hosts().cloned().collect();
        let manifests = self.render(&model, &hosts, self.now(), RenderMode::Refresh);
        self.store
            .save_manifests(&manifests)
            .await
            .during("saving refreshed manifests")?;
        Ok(self.applied(&mut model, &manifests).hosts_changed)
    }
}

/// The enrolled host `id` (not a removed one), or 404: what a pin, hold or host change
/// may name.
pub(super) fn active_host<'a>(fleet: &'a Fleet, id: &HostId) -> Result<&'a HostRecord, ServiceError> {
    fleet
        .hosts
        .get(id)
        .filter(|host| host.is_active())
        .ok_or_else(|| ServiceError::Unknown("host_not_found", format!("no enrolled host {id}")))
}

/// Pins of an app are the rollout controller's while the app has an active rollout (it
/// moves hosts with host pins and gives them back on abort): a manual pin or unpin then
/// is refused (409), pointing at the rollout commands. Holds stay allowed: they are the
/// kill switch.
pub(super) fn refuse_during_rollout(model: &Model, app: &AppName, verb: &str) -> Result<(), ServiceError> {
    match model.rollouts.get(app) {
        Some(active) => Err(ServiceError::Conflicting(
            "rollout_active",
            format!(
                "cannot {verb} {app} while rollout {} is {}; use drover rollout pause|abort {app} (or drover hold to stop hosts at once)",
                active.rollout.id(),
                active.rollout.phase()
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::api::{Pin, Scope};
    use drover_protocol::manifest::{MAX_APPS, MAX_MANIFEST_BYTES};
    use drover_protocol::{AppName, HostId};

    use super::{manifests_with, refuse_oversized, refuse_too_many_apps};
    use crate::server::service::testing::{code, coordinator, name, operator};

    fn pin(app: &str, version: &str, scope: Scope) -> Pin {
        Pin {
            app: name(app),
            version: name(version),
            scope,
        }
    }

    #[test]
    fn manifests_over_the_agents_limits_are_refused_naming_the_host() {
        let host: HostId = name("web-1");
        refuse_too_many_apps("pinning", &host, MAX_APPS).expect("at the limit");
        let error = refuse_too_many_apps("pinning", &host, MAX_APPS + 1).expect_err("over");
        assert_eq!(code(&error), "too_many_apps");
        assert!(error.to_string().contains("web-1"), "{error}");
        refuse_oversized("pinning", &host, MAX_MANIFEST_BYTES, 1).expect("at the limit");
        let error = refuse_oversized("pinning", &host, MAX_MANIFEST_BYTES + 1, 3).expect_err("over");
        assert_eq!(code(&error), "manifest_too_large");
        assert!(error.to_string().contains("and 2 more hosts over"), "{error}");
    }

    #[tokio::test]
    async fn a_pin_re_signs_only_what_changes_and_publishes_it() {
        let test = coordinator().await;
        let service = &test.coordinator;
        let web1 = test.join("web-1", &[]).await;
        test.join("web-2", &[]).await;
        test.release("web", "1.0.0").await;
        let slot = service.host_slot(Some(&web1)).expect("slot");
        let mut updates = slot.subscribe();
        let changed = service
            .pin(pin("web", "1.0.0", Scope::Host(name("web-1"))), &operator(), None)
            .await
            .expect("pin");
        assert_eq!(changed.hosts_changed, 1, "only web-1 is re-signed");
        assert!(updates.has_changed().expect("sender alive"), "web-1's long-polls wake");
        let published = updates.borrow_and_update().clone();
        assert_eq!(published.serial, 2);
        assert_eq!(published.versions.get(&name::<AppName>("web")), Some(&name("1.0.0")));
        assert_eq!(published.digests.len(), 1, "the release's artifact may be downloaded");
        // The fleet pin changes web-2 only: web-1's host pin outranks it.
        let changed = service
            .pin(pin("web", "1.0.0", Scope::Fleet), &operator(), Some("everyone"))
            .await
            .expect("fleet pin");
        assert_eq!(changed.hosts_changed, 1);
        assert!(!updates.has_changed().expect("sender alive"));
        assert_eq!(service.refresh().await.expect("refresh"), 0, "nothing is near expiry");
    }

    #[tokio::test]
    async fn pins_and_holds_refuse_what_does_not_exist_and_a_repeated_hold_records_nothing() {
        let test = coordinator().await;
        let service = &test.coordinator;
        test.join("web-1", &[]).await;
        test.release("web", "1.0.0").await;
        let refused = [
            (pin("web", "9.9.9", Scope::Fleet), "release_not_found"),
            (pin("web", "1.0.0", Scope::Group("nope".to_owned())), "group_not_found"),
            (pin("web", "1.0.0", Scope::Host(name("web-9"))), "host_not_found"),
        ];
        for (request, expected) in refused {
            let error = service.pin(request, &operator(), None).await.expect_err("refused");
            assert_eq!(code(&error), expected);
        }
        let error = service
            .unpin(name("web"), Scope::Fleet, &operator(), None)
            .await
            .expect_err("no pin");
        assert_eq!(code(&error), "pin_not_found");
        let error = service
            .pin(pin("web", "1.0.0", Scope::Fleet), &operator(), Some(&"x".repeat(501)))
            .await
            .expect_err("long reason");
        assert_eq!(code(&error), "bad_reason");

        assert_eq!(
            service
                .hold(Scope::Fleet, true, &operator(), None)
                .await
                .expect("hold")
                .hosts_changed,
            1
        );
        assert_eq!(
            service
                .hold(Scope::Fleet, true, &operator(), None)
                .await
                .expect("again")
                .hosts_changed,
            0
        );
        let holds = service.pins(None).await.expect("pins").holds;
        assert_eq!(holds.len(), 1, "{holds:?}");
        assert_eq!(
            service
                .hold(Scope::Fleet, false, &operator(), None)
                .await
                .expect("unhold")
                .hosts_changed,
            1
        );
        assert!(service.pins(None).await.expect("pins").holds.is_empty());
    }

    #[tokio::test]
    async fn the_size_bound_of_a_rollout_counts_each_distinct_desired_state_once() {
        let test = coordinator().await;
        let service = &test.coordinator;
        test.join("web-1", &[]).await;
        test.join("web-22", &[]).await;
        test.release("web", "1.0.0").await;
        let model = service.model.lock().await;
        let sizes = manifests_with(&model.fleet, &name("web"), &name("1.0.0"));
        assert_eq!(sizes.len(), 1, "both hosts would get the same desired state");
        let (host, size, apps) = &sizes[0];
        assert_eq!(host.as_str(), "web-22", "the longest id stands for them");
        assert_eq!(*apps, 1);
        assert!(*size > 0 && *size < MAX_MANIFEST_BYTES);
    }

    #[tokio::test]
    async fn the_refresher_re_signs_a_manifest_at_half_its_lifetime() {
        let test = coordinator().await;
        let service = &test.coordinator;
        let identity = test.join("web-1", &[]).await;
        let ttl = service.config().manifest_ttl;
        let almost_half = drover_protocol::Duration::from_millis(ttl.as_millis() / 2 - 1000);
        let slot = service.host_slot(Some(&identity)).expect("slot");
        let serial = slot.subscribe().borrow().serial;
        test.clock.advance(almost_half);
        assert_eq!(
            service.refresh().await.expect("refresh"),
            0,
            "more than half its lifetime left"
        );
        test.clock.advance(drover_protocol::Duration::from_secs(1));
        assert_eq!(service.refresh().await.expect("refresh"), 1);
        assert_eq!(slot.subscribe().borrow().serial, serial + 1);
        assert_eq!(service.refresh().await.expect("refresh"), 0, "fresh again");
    }
}
