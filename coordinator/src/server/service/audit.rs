//! The audit trail: the fleet-wide history (`drover history`) and the lines the admin
//! changes that belong to no app record (label changes, groups, admin tokens), each under
//! the operator's name with its `--reason`. The lines are written by the store in the
//! same transaction as the change itself, so a change is never durable without its line.

use drover_protocol::api::{AuditEntry, HistoryQuery, Labels, TokenName, check_reason};
use drover_protocol::{HostId, Timestamp};

use super::error::During as _;
use super::{Coordinator, Operator, ServiceError};
use crate::server::store::AdminChange;
use crate::text::labels_text;

impl Coordinator {
    /// `drover history`: every history the coordinator keeps (each app's, each host id's
    /// and the admin changes), merged newest first, filtered and bounded by `query`.
    pub async fn history(&self, query: &HistoryQuery) -> Result<Vec<AuditEntry>, ServiceError> {
        self.store.fleet_history(query).await.during("reading the history")
    }
}

/// A request's `--reason`, checked by the one rule ([`check_reason`]): 400 `bad_reason`
/// otherwise.
pub(super) fn checked_reason(reason: Option<&str>) -> Result<Option<String>, ServiceError> {
    check_reason(reason).map_err(|error| ServiceError::Invalid("bad_reason", error))
}

/// The line an admin change records.
pub(super) fn admin_change(
    at: Timestamp,
    operator: &Operator,
    host: Option<&HostId>,
    what: String,
    reason: Option<String>,
) -> AdminChange {
    AdminChange {
        at,
        who: operator.name().to_owned(),
        host: host.cloned(),
        what,
        reason,
    }
}

/// `labels of web-01: set env=prod; removed tier; now env=prod,region=eu`.
pub(super) fn labels_changed(id: &HostId, set: &Labels, remove: &[String], now: &Labels) -> String {
    let mut parts = Vec::new();
    if !set.is_empty() {
        parts.push(format!("set {}", labels_text(set)));
    }
    if !remove.is_empty() {
        parts.push(format!("removed {}", remove.join(",")));
    }
    parts.push(format!("now {}", labels_text(now)));
    format!("labels of {id}: {}", parts.join("; "))
}

/// `created group prod-eu selecting env=prod`, or `changed group prod-eu to select ...
/// (was ...)` when it existed.
pub(super) fn group_put(name: &str, selector: &Labels, previous: Option<&Labels>) -> String {
    match previous {
        None => format!("created group {name} selecting {}", labels_text(selector)),
        Some(previous) => format!(
            "changed group {name} to select {} (was {})",
            labels_text(selector),
            labels_text(previous)
        ),
    }
}

/// `deleted group prod-eu (it selected env=prod)`.
pub(super) fn group_deleted(name: &str, selector: &Labels) -> String {
    format!("deleted group {name} (it selected {})", labels_text(selector))
}

/// `created admin token ci, valid until revoked` / `..., expiring at T`.
pub(super) fn admin_token_created(name: &TokenName, expires_at: Option<Timestamp>) -> String {
    match expires_at {
        None => format!("created admin token {name}, valid until revoked"),
        Some(at) => format!("created admin token {name}, expiring at {at}"),
    }
}

/// `revoked admin token ci`.
pub(super) fn admin_token_revoked(name: &TokenName) -> String {
    format!("revoked admin token {name}: requests with it are refused from now on")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::service::testing::labels;

    #[test]
    fn lines_say_what_changed() {
        let id: HostId = "web-01".parse().expect("host");
        assert_eq!(
            labels_changed(
                &id,
                &labels(&[("env", "prod")]),
                &["tier".to_owned()],
                &labels(&[("env", "prod"), ("region", "eu")])
            ),
            "labels of web-01: set env=prod; removed tier; now env=prod,region=eu"
        );
        assert_eq!(
            labels_changed(&id, &Labels::new(), &["tier".to_owned()], &Labels::new()),
            "labels of web-01: removed tier; now -"
        );
        let selector = labels(&[("env", "prod")]);
        assert_eq!(group_put("eu", &selector, None), "created group eu selecting env=prod");
        assert_eq!(
            group_put("eu", &selector, Some(&labels(&[("env", "dev")]))),
            "changed group eu to select env=prod (was env=dev)"
        );
        assert_eq!(
            group_deleted("eu", &selector),
            "deleted group eu (it selected env=prod)"
        );
        let name: TokenName = "ci".parse().expect("name");
        assert_eq!(
            admin_token_created(&name, None),
            "created admin token ci, valid until revoked"
        );
        assert!(admin_token_revoked(&name).starts_with("revoked admin token ci"));
    }

    #[test]
    fn reasons_are_checked_by_the_shared_rule() {
        assert_eq!(checked_reason(Some("  why ")).expect("ok"), Some("why".to_owned()));
        assert_eq!(checked_reason(Some(" ")).expect("blank"), None);
        assert!(matches!(
            checked_reason(Some(&"x".repeat(501))),
            Err(ServiceError::Invalid("bad_reason", _))
        ));
    }
}
