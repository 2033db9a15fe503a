//! Hosts, labels and groups: listing, showing, labelling and removing hosts, and the
//! groups (label selectors) that pins and holds can name.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use drover_protocol::api::{ChangeResult, Group, HostApp, HostDetail, HostHistoryEntry, HostSummary, Labels, Scope};
use drover_protocol::{AppName, HostId, Timestamp};

use super::admin::{Actor, Operator};
use super::desired::{RenderMode, check_manifests};
use super::error::ServiceError;
use super::{Coordinator, Model, now};
use crate::server::fleet::Fleet;
use crate::server::rollout::Event;
use crate::server::store::HostRecord;

pub(super) fn empty_app() -> HostApp {
    HostApp {
        desired: None,
        current: None,
        state: None,
        last_error: None,
    }
}

pub(super) fn active_host<'a>(fleet: &'a Fleet, id: &HostId) -> Result<&'a HostRecord, ServiceError> {
    fleet
        .hosts
        .get(id)
        .filter(|host| host.cert_sha256.is_some())
        .ok_or_else(|| ServiceError::NotFound("host_not_found", format!("no enrolled host {id}")))
}

pub(super) fn check_labels(labels: &Labels) -> Result<(), ServiceError> {
    let valid = |text: &str| {
        (1..=63).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    };
    if labels.len() > 64 {
        return Err(ServiceError::BadRequest("bad_labels", "at most 64 labels".into()));
    }
    for (key, value) in labels {
        if !valid(key) || !valid(value) {
            return Err(ServiceError::BadRequest(
                "bad_labels",
                format!(
                    "invalid label {:?}={:?}: keys and values are 1 to 63 characters of letters, digits, '-', '_', '.', '/'",
                    key.chars().take(70).collect::<String>(),
                    value.chars().take(70).collect::<String>()
                ),
            ));
        }
    }
    Ok(())
}

pub(super) fn check_group_name(name: &str) -> Result<(), ServiceError> {
    name.parse::<AppName>().map(|_| ()).map_err(|_| {
        ServiceError::BadRequest(
            "bad_group_name",
            format!("invalid group name {name:?}: use a-z, 0-9 and '-'"),
        )
    })
}

impl Coordinator {
    pub(super) fn summary(&self, model: &Model, host: &HostRecord) -> HostSummary {
        let slot = self.slots.read().expect("slots lock").get(&host.id).cloned();
        let published = slot.as_ref().map(|slot| slot.manifest.borrow().clone());
        let reports = self.reports.lock().expect("reports lock");
        let report = reports.get(&host.id).map(|(report, _)| report);
        let mut apps: BTreeMap<AppName, HostApp> = BTreeMap::new();
        if let Some(published) = &published {
            for (app, version) in &published.versions {
                apps.entry(app.clone()).or_insert_with(empty_app).desired = Some(version.clone());
            }
        }
        if let Some(report) = report {
            for (app, state) in &report.apps {
                let entry = apps.entry(app.clone()).or_insert_with(empty_app);
                entry.current = state.current.clone();
                entry.state = Some(state.state);
                entry.last_error = state.last_error.clone();
            }
        }
        let last_seen = slot
            .map(|slot| slot.last_seen.load(Ordering::Relaxed))
            .filter(|seen| *seen > 0);
        HostSummary {
            id: host.id.clone(),
            labels: host.labels.clone(),
            joined_at: host.joined_at,
            last_seen: last_seen.map(Timestamp::from_unix),
            manifest_serial: model.rendered.get(&host.id).map_or(0, |rendered| rendered.serial),
            reported_serial: report.and_then(|report| report.manifest_serial),
            held: published.is_some_and(|published| published.held),
            apps,
            facts: report.map(|report| report.facts.clone()),
            certificate_not_after: self
                .slots
                .read()
                .expect("slots lock")
                .get(&host.id)
                .and_then(|slot| slot.identity.read().expect("slot identity lock").not_after)
                .or(host.cert_not_after),
        }
    }

    /// `drover hosts list`.
    pub async fn hosts(&self) -> Vec<HostSummary> {
        let model = self.model.lock().await;
        model
            .fleet
            .active_hosts()
            .map(|host| self.summary(&model, host))
            .collect()
    }

    /// `drover hosts show`.
    pub async fn host(&self, id: &HostId) -> Result<HostDetail, ServiceError> {
        let summary = {
            let model = self.model.lock().await;
            let host = active_host(&model.fleet, id)?;
            self.summary(&model, host)
        };
        let manifest_rejection = self
            .reports
            .lock()
            .expect("reports lock")
            .get(id)
            .and_then(|(report, _)| report.manifest_rejection.clone());
        let events = self.store.events(id).await?;
        let history = self.store.host_history(id, 1_000).await?;
        Ok(HostDetail {
            summary,
            manifest_rejection,
            events,
            history,
        })
    }

    /// `drover hosts history`: the id's joins, replacements, renewals and removals, also
    /// while it is removed.
    pub async fn host_history(&self, id: &HostId) -> Result<Vec<HostHistoryEntry>, ServiceError> {
        if !self.model.lock().await.fleet.hosts.contains_key(id) {
            return Err(ServiceError::NotFound(
                "host_not_found",
                format!("no host with id {id} was ever enrolled"),
            ));
        }
        Ok(self.store.host_history(id, 10_000).await?)
    }

    /// `drover hosts label`.
    pub async fn label_host(
        &self,
        id: &HostId,
        set: Labels,
        remove: Vec<String>,
    ) -> Result<ChangeResult, ServiceError> {
        check_labels(&set)?;
        let mut model = self.model.lock().await;
        let mut record = active_host(&model.fleet, id)?.clone();
        for key in &remove {
            record.labels.remove(key);
        }
        record.labels.extend(set);
        let previous = model.fleet.hosts.insert(id.clone(), record.clone());
        let manifests = self.render(&model, &[record.clone()], now(), RenderMode::Changed);
        let outcome = match check_manifests(&model.fleet, &manifests, &format!("labelling host {id}")) {
            Ok(()) => self
                .store
                .set_labels(id, &record.labels, &manifests)
                .await
                .map_err(ServiceError::from),
            Err(error) => Err(error),
        };
        if let Err(error) = outcome {
            if let Some(previous) = previous {
                model.fleet.hosts.insert(id.clone(), previous);
            }
            return Err(error);
        }
        Ok(self.applied(&mut model, &manifests))
    }

    /// `drover hosts remove`: the host's certificate stops working at once.
    pub async fn remove_host(&self, id: &HostId, operator: &Operator) -> Result<(), ServiceError> {
        let mut model = self.model.lock().await;
        let old_certificate = active_host(&model.fleet, id)?.cert_sha256.clone();
        let history = HostHistoryEntry {
            at: now(),
            who: operator.name().to_owned(),
            what: "removed: its key and certificates stop working; the id, with its host pins and holds, comes back only with `drover token create --replace HOST`".to_owned(),
            old_certificate,
            new_certificate: None,
        };
        self.store.remove_host(id, &history).await?;
        if let Some(record) = model.fleet.hosts.get_mut(id) {
            record.cert_sha256 = None;
            record.key_sha256 = None;
            record.cert_not_after = None;
        }
        self.slots.write().expect("slots lock").remove(id);
        self.reports.lock().expect("reports lock").remove(id);
        let now = now();
        let apps: Vec<AppName> = model
            .rollouts
            .iter()
            .filter(|(_, active)| active.rollout.host_status(id).is_some())
            .map(|(app, _)| app.clone())
            .collect();
        for app in apps {
            let event = Event::HostRemoved { host: id.clone() };
            let actor = Actor::of(operator, None);
            if let Err(error) = self
                .step_rollout(&mut model, &app, vec![event], now, &actor, false)
                .await
            {
                tracing::error!(%error, %app, host = %id, "the rollout could not take the host's removal; it will count as missing its deadline");
            }
        }
        Ok(())
    }

    /// `drover groups list`.
    pub async fn groups(&self) -> Vec<Group> {
        let model = self.model.lock().await;
        model
            .fleet
            .groups
            .iter()
            .map(|(name, selector)| Group {
                name: name.clone(),
                selector: selector.clone(),
            })
            .collect()
    }

    /// `drover groups create`: re-renders hosts the old or new selector matched.
    pub async fn put_group(&self, group: Group) -> Result<ChangeResult, ServiceError> {
        check_group_name(&group.name)?;
        check_labels(&group.selector)?;
        if group.selector.is_empty() {
            return Err(ServiceError::BadRequest(
                "empty_selector",
                "a group needs at least one label in its selector (use the fleet scope for every host)".into(),
            ));
        }
        let mut model = self.model.lock().await;
        let scope = Scope::Group(group.name.clone());
        let before = model.fleet.hosts_in(&scope);
        let previous = model.fleet.groups.insert(group.name.clone(), group.selector.clone());
        let mut scopes: Vec<Scope> = before.into_iter().map(Scope::Host).collect();
        scopes.push(scope);
        let manifests = self.render_scope(&model, &scopes, now());
        let outcome = match check_manifests(&model.fleet, &manifests, &format!("group {}", group.name)) {
            Ok(()) => self
                .store
                .put_group(&group.name, &group.selector, &manifests)
                .await
                .map_err(ServiceError::from),
            Err(error) => Err(error),
        };
        if let Err(error) = outcome {
            match previous {
                Some(previous) => model.fleet.groups.insert(group.name.clone(), previous),
                None => model.fleet.groups.remove(&group.name),
            };
            return Err(error);
        }
        Ok(self.applied(&mut model, &manifests))
    }

    /// `drover groups delete`: refused while pins or holds use the group.
    pub async fn delete_group(&self, name: &str) -> Result<(), ServiceError> {
        let mut model = self.model.lock().await;
        if !model.fleet.groups.contains_key(name) {
            return Err(ServiceError::NotFound(
                "group_not_found",
                format!("no group named {name}"),
            ));
        }
        let scope = Scope::Group(name.to_owned());
        let pinned = model.fleet.pins.keys().any(|(_, pin_scope)| pin_scope == &scope);
        if pinned || model.fleet.holds.contains(&scope) {
            return Err(ServiceError::Conflict(
                "group_in_use",
                format!("group {name} has pins or holds; unpin and unhold it first"),
            ));
        }
        self.store.delete_group(name).await?;
        model.fleet.groups.remove(name);
        Ok(())
    }
}
