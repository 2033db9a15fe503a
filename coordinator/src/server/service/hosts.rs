//! Hosts, labels and groups: listing, showing, labelling and removing hosts, and the
//! groups (label selectors) that pins and holds can name.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use drover_protocol::api::{ChangeResult, Group, HostApp, HostDetail, HostHistoryEntry, HostSummary, Labels, Scope};
use drover_protocol::{AppName, HostId, Timestamp};

use super::admin::{Actor, Operator};
use super::audit;
use super::desired::{RenderMode, active_host, check_manifests};
use super::error::{During as _, ServiceError};
use super::{Coordinator, Model};
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

pub(super) fn check_labels(labels: &Labels) -> Result<(), ServiceError> {
    let valid = |text: &str| {
        (1..=63).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    };
    if labels.len() > 64 {
        return Err(ServiceError::Invalid("bad_labels", "at most 64 labels".into()));
    }
    for (key, value) in labels {
        if !valid(key) || !valid(value) {
            return Err(ServiceError::Invalid(
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
        ServiceError::Invalid(
            "bad_group_name",
            format!("invalid group name {name:?}: use a-z, 0-9 and '-'"),
        )
    })
}

impl Coordinator {
    pub(super) fn summary(&self, model: &Model, host: &HostRecord) -> HostSummary {
        let slot = self.slots.read().get(&host.id).cloned();
        let published = slot.as_ref().map(|slot| slot.manifest.borrow().clone());
        let reports = self.reports.lock();
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
                .get(&host.id)
                .and_then(|slot| slot.identity.read().not_after)
                .or(host.cert_not_after),
        }
    }

    /// `drover hosts list`.
    pub async fn hosts(&self) -> Vec<HostSummary> {
        let model = self.model().await;
        model
            .fleet
            .active_hosts()
            .map(|host| self.summary(&model, host))
            .collect()
    }

    /// `drover hosts show`.
    pub async fn host(&self, id: &HostId) -> Result<HostDetail, ServiceError> {
        let summary = {
            let model = self.model().await;
            let host = active_host(&model.fleet, id)?;
            self.summary(&model, host)
        };
        let manifest_rejection = self
            .reports
            .lock()
            .get(id)
            .and_then(|(report, _)| report.manifest_rejection.clone());
        let events = self.store.events(id).await.during("reading a host's events")?;
        let history = self
            .store
            .host_history(id, 1_000)
            .await
            .during("reading a host's history")?;
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
        if !self.model().await.fleet.hosts.contains_key(id) {
            return Err(ServiceError::Unknown(
                "host_not_found",
                format!("no host with id {id} was ever enrolled"),
            ));
        }
        self.store
            .host_history(id, 10_000)
            .await
            .during("reading a host's history")
    }

    /// `drover hosts label`, recorded under the operator's name with `reason` (`drover
    /// history`) in the same transaction.
    pub async fn label_host(
        &self,
        id: &HostId,
        set: Labels,
        remove: Vec<String>,
        operator: &Operator,
        reason: Option<&str>,
    ) -> Result<ChangeResult, ServiceError> {
        check_labels(&set)?;
        let reason = audit::checked_reason(reason)?;
        let mut model = self.model().await;
        let mut record = active_host(&model.fleet, id)?.clone();
        for key in &remove {
            record.labels.remove(key);
        }
        record.labels.extend(set.clone());
        let what = audit::labels_changed(id, &set, &remove, &record.labels);
        let previous = model.fleet.hosts.insert(id.clone(), record.clone());
        let now = self.now();
        let change = audit::admin_change(now, operator, Some(id), what, reason);
        let manifests = self.render(&model, &[record.clone()], now, RenderMode::Changed);
        let outcome = match check_manifests(&model.fleet, &manifests, &format!("labelling host {id}")) {
            Ok(()) => self
                .store
                .set_labels(id, &record.labels, &manifests, &change)
                .await
                .during("labelling a host"),
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

    /// `drover hosts remove`: the host's certificate stops working at once. Recorded in
    /// the id's history under the operator's name, with `reason`.
    pub async fn remove_host(
        &self,
        id: &HostId,
        operator: &Operator,
        reason: Option<&str>,
    ) -> Result<(), ServiceError> {
        let reason = audit::checked_reason(reason)?;
        let mut model = self.model().await;
        let old_certificate = active_host(&model.fleet, id)?.cert_sha256.clone();
        let history = HostHistoryEntry {
            at: self.now(),
            who: operator.name().to_owned(),
            what: "removed: its key and certificates stop working; the id, with its host pins and holds, comes back only with `drover token create --replace HOST`".to_owned(),
            old_certificate,
            new_certificate: None,
        };
        self.store
            .remove_host(id, &history, reason.as_deref())
            .await
            .during("removing a host")?;
        if let Some(record) = model.fleet.hosts.get_mut(id) {
            record.cert_sha256 = None;
            record.key_sha256 = None;
            record.cert_not_after = None;
        }
        self.slots.write().remove(id);
        self.reports.lock().remove(id);
        let now = self.now();
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
        let model = self.model().await;
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

    /// `drover groups create`: re-renders hosts the old or new selector matched. Recorded
    /// under the operator's name with `reason`, in the same transaction.
    pub async fn put_group(
        &self,
        group: Group,
        operator: &Operator,
        reason: Option<&str>,
    ) -> Result<ChangeResult, ServiceError> {
        check_group_name(&group.name)?;
        check_labels(&group.selector)?;
        let reason = audit::checked_reason(reason)?;
        if group.selector.is_empty() {
            return Err(ServiceError::Invalid(
                "empty_selector",
                "a group needs at least one label in its selector (use the fleet scope for every host)".into(),
            ));
        }
        let mut model = self.model().await;
        let scope = Scope::Group(group.name.clone());
        let before = model.fleet.hosts_in(&scope);
        let previous = model.fleet.groups.insert(group.name.clone(), group.selector.clone());
        let mut scopes: Vec<Scope> = before.into_iter().map(Scope::Host).collect();
        scopes.push(scope);
        let now = self.now();
        let what = audit::group_put(&group.name, &group.selector, previous.as_ref());
        let change = audit::admin_change(now, operator, None, what, reason);
        let manifests = self.render_scope(&model, &scopes, now);
        let outcome = match check_manifests(&model.fleet, &manifests, &format!("group {}", group.name)) {
            Ok(()) => self
                .store
                .put_group(&group.name, &group.selector, &manifests, &change)
                .await
                .during("saving a group"),
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

    /// `drover groups delete`: refused while pins or holds use the group. Recorded under
    /// the operator's name with `reason`, in the same transaction.
    pub async fn delete_group(
        &self,
        name: &str,
        operator: &Operator,
        reason: Option<&str>,
    ) -> Result<(), ServiceError> {
        let reason = audit::checked_reason(reason)?;
        let mut model = self.model().await;
        let Some(selector) = model.fleet.groups.get(name) else {
            return Err(ServiceError::Unknown(
                "group_not_found",
                format!("no group named {name}"),
            ));
        };
        let what = audit::group_deleted(name, selector);
        let scope = Scope::Group(name.to_owned());
        let pinned = model.fleet.pins.keys().any(|(_, pin_scope)| pin_scope == &scope);
        if pinned || model.fleet.holds.contains(&scope) {
            return Err(ServiceError::Conflicting(
                "group_in_use",
                format!("group {name} has pins or holds; unpin and unhold it first"),
            ));
        }
        let change = audit::admin_change(self.now(), operator, None, what, reason);
        self.store
            .delete_group(name, &change)
            .await
            .during("deleting a group")?;
        model.fleet.groups.remove(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::api::{Group, Labels, Pin, Scope};
    use drover_protocol::{HostId, Version};

    use super::{check_group_name, check_labels};
    use crate::server::service::testing::{code, coordinator, labels, name, operator};

    #[test]
    fn labels_are_short_plain_words_and_at_most_64() {
        check_labels(&labels(&[("role", "web"), ("zone", "eu-west/1.a_b")])).expect("plain labels");
        for bad in [("", "web"), ("role", ""), ("role", "web server"), ("rôle", "web")] {
            let error = check_labels(&labels(&[bad])).expect_err("bad label");
            assert_eq!(code(&error), "bad_labels", "{bad:?}");
        }
        let long = "x".repeat(64);
        assert_eq!(
            code(&check_labels(&labels(&[("role", &long)])).expect_err("64 long")),
            "bad_labels"
        );
        let many: Labels = (0..65).map(|n| (format!("k{n}"), "v".to_owned())).collect();
        assert_eq!(code(&check_labels(&many).expect_err("65 labels")), "bad_labels");
        // A hostile label is quoted and cut in the message.
        let error = check_labels(&labels(&[(&"\n".repeat(200), "v")])).expect_err("newlines");
        assert!(error.to_string().len() < 600, "{error}");
    }

    #[test]
    fn group_names_are_app_names() {
        check_group_name("web-eu").expect("plain");
        for bad in ["", "Web", "web eu", "../x"] {
            assert_eq!(
                code(&check_group_name(bad).expect_err("bad")),
                "bad_group_name",
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn labels_move_a_host_into_a_groups_pin() {
        let test = coordinator().await;
        let service = &test.coordinator;
        test.join("web-1", &[]).await;
        test.release("web", "1.0.0").await;
        let group = Group {
            name: "eu".to_owned(),
            selector: labels(&[("zone", "eu")]),
        };
        assert_eq!(
            service
                .put_group(group, &operator(), None)
                .await
                .expect("group")
                .hosts_changed,
            0
        );
        let pin = Pin {
            app: name("web"),
            version: name("1.0.0"),
            scope: Scope::Group("eu".to_owned()),
        };
        assert_eq!(service.pin(pin, &operator(), None).await.expect("pin").hosts_changed, 0);
        let host: HostId = name("web-1");
        let changed = service
            .label_host(&host, labels(&[("zone", "eu")]), Vec::new(), &operator(), None)
            .await
            .expect("label");
        assert_eq!(changed.hosts_changed, 1);
        let summary = service.host(&host).await.expect("host").summary;
        let desired = summary.apps.get(&name("web")).and_then(|app| app.desired.clone());
        assert_eq!(desired, Some(name::<Version>("1.0.0")));
        let error = service
            .delete_group("eu", &operator(), None)
            .await
            .expect_err("pinned group");
        assert_eq!(code(&error), "group_in_use");
        let error = service
            .put_group(
                Group {
                    name: "all".to_owned(),
                    selector: Labels::new(),
                },
                &operator(),
                None,
            )
            .await
            .expect_err("empty selector");
        assert_eq!(code(&error), "empty_selector");
    }

    #[tokio::test]
    async fn a_removed_host_is_gone_from_the_list_and_its_certificate_refused() {
        let test = coordinator().await;
        let service = &test.coordinator;
        let identity = test.join("web-1", &[]).await;
        let host: HostId = name("web-1");
        service.remove_host(&host, &operator(), None).await.expect("remove");
        assert!(service.hosts().await.is_empty());
        assert_eq!(
            code(&service.host_slot(Some(&identity)).expect_err("removed")),
            "host_removed"
        );
        assert_eq!(code(&service.host(&host).await.expect_err("removed")), "host_not_found");
        // Its history stays.
        let history = service.host_history(&host).await.expect("history");
        assert!(history.iter().any(|entry| entry.who == "tester"), "{history:?}");
        assert_eq!(
            code(&service.remove_host(&host, &operator(), None).await.expect_err("twice")),
            "host_not_found"
        );
    }
}
