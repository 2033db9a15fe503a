//! Admin tokens and who acts: [`Coordinator::check_admin`] turns a bearer token into an
//! [`Operator`], the `who` of every change; named tokens are created, listed and revoked
//! here (the last valid one never).

use drover_protocol::api::{
    AdminTokenCreated, AdminTokenInfo, AdminTokenRequest, AdminTokenState, BOOTSTRAP_TOKEN_NAME, TokenName,
};
use drover_protocol::{Duration, Timestamp};

use super::error::{During as _, ServiceError};
use super::{Coordinator, hash_secret};
use crate::server::store::AdminTokenRecord;

/// Who made a request: the name of the admin token it came with, made only by
/// [`Coordinator::check_admin`] (and [`Operator::new`] for in-process callers). It is the
/// `who` of everything the request records in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator(TokenName);

impl Operator {
    /// An operator by token name, for callers inside the coordinator's process.
    pub fn new(name: TokenName) -> Operator {
        Operator(name)
    }

    /// The token's name.
    pub fn name(&self) -> &str {
        self.0.as_str()
    }
}

/// Who took a step and why, for the history: an operator, or the controller by itself.
#[derive(Debug)]
pub(super) struct Actor {
    pub(super) who: String,
    pub(super) reason: Option<String>,
}

impl Actor {
    pub(super) fn of(operator: &Operator, reason: Option<String>) -> Actor {
        Actor {
            who: operator.name().to_owned(),
            reason,
        }
    }
}

/// How precisely "last used" of an admin token is kept: at most one write per token per
/// this many seconds, so admin requests do not each cost a database write.
pub(super) const LAST_USED_PRECISION_SECONDS: i64 = 60;

/// The longest `--ttl` of an admin token (no `--ttl`: valid until revoked).
pub(super) const MAX_ADMIN_TOKEN_TTL_DAYS: u64 = 3650;

pub(super) fn admin_token_info(token: &AdminTokenRecord, now: Timestamp) -> AdminTokenInfo {
    let state = if token.revoked_at.is_some() {
        AdminTokenState::Revoked
    } else if token.expired(now) {
        AdminTokenState::Expired
    } else {
        AdminTokenState::Active
    };
    AdminTokenInfo {
        name: token.name.clone(),
        state,
        created_at: token.created_at,
        created_by: token.created_by.clone(),
        expires_at: token.expires_at,
        last_used_at: token.last_used_at,
        revoked_at: token.revoked_at,
        revoked_by: token.revoked_by.clone(),
    }
}

pub(super) fn check_reason(reason: Option<&str>) -> Result<Option<String>, ServiceError> {
    match reason.map(str::trim).filter(|reason| !reason.is_empty()) {
        Some(reason) if reason.chars().count() > 500 => Err(ServiceError::Invalid(
            "bad_reason",
            "--reason is limited to 500 characters".into(),
        )),
        other => Ok(other.map(str::to_owned)),
    }
}

impl Coordinator {
    /// Checks an admin bearer token and returns whose it is: the name every change the
    /// request makes is recorded under. Revoked and expired tokens are refused at once.
    pub async fn check_admin(&self, token: Option<&str>) -> Result<Operator, ServiceError> {
        let Some(token) = token else {
            return Err(ServiceError::Unauthenticated(
                "admin_token_missing",
                "this endpoint needs an admin token: Authorization: Bearer <token> (the CLI reads it from the data directory or DROVER_TOKEN)".into(),
            ));
        };
        // Looking the secret up by its digest keeps the timing independent of the secret.
        let hash = hash_secret(token);
        let now = self.now();
        if self.store.is_shared() && !self.admin_tokens.read().iter().any(|token| token.hash == hash) {
            // Made through another replica a moment ago, before its notification came:
            // read the tokens again rather than refuse a valid one. (A wrong token costs a
            // small read; the connection budget bounds how often.)
            match self.store.admin_tokens().await {
                Ok(tokens) => *self.admin_tokens.write() = tokens,
                Err(error) => tracing::warn!(%error, "reading the admin tokens again failed"),
            }
        }
        let (name, touch) = {
            let tokens = self.admin_tokens.read();
            let Some(record) = tokens.iter().find(|token| token.hash == hash) else {
                return Err(ServiceError::Unauthenticated(
                    "admin_token_invalid",
                    "the admin token is wrong".into(),
                ));
            };
            if let Some(revoked_at) = record.revoked_at {
                return Err(ServiceError::Unauthenticated(
                    "admin_token_revoked",
                    format!(
                        "the admin token {} was revoked at {revoked_at}; ask an operator for a new one (drover admin-token create NAME)",
                        record.name
                    ),
                ));
            }
            if let Some(expires_at) = record.expires_at.filter(|_| record.expired(now)) {
                return Err(ServiceError::Unauthenticated(
                    "admin_token_expired",
                    format!(
                        "the admin token {} expired at {expires_at}; ask an operator for a new one (drover admin-token create NAME)",
                        record.name
                    ),
                ));
            }
            let stale = record
                .last_used_at
                .is_none_or(|last| now.unix() - last.unix() >= LAST_USED_PRECISION_SECONDS);
            (record.name.clone(), stale)
        };
        if touch {
            if let Some(record) = self.admin_tokens.write().iter_mut().find(|token| token.hash == hash) {
                record.last_used_at = Some(now);
            }
            // Informational only: a failed write must not refuse the request.
            if let Err(error) = self.store.touch_admin_token(&hash, now).await {
                tracing::warn!(%error, token = %name, "noting when the admin token was last used failed");
            }
        }
        Ok(Operator(name))
    }

    /// `drover admin-token create`: a named admin token; the secret is returned once and
    /// stored only hashed. A name is unique among the tokens not revoked; an expired token
    /// of the same name is revoked in the same transaction.
    pub async fn create_admin_token(
        &self,
        request: AdminTokenRequest,
        operator: &Operator,
        reason: Option<&str>,
    ) -> Result<AdminTokenCreated, ServiceError> {
        let reason = super::audit::checked_reason(reason)?;
        if request.name.as_str() == BOOTSTRAP_TOKEN_NAME {
            return Err(ServiceError::Invalid(
                "reserved_token_name",
                format!(
                    "{BOOTSTRAP_TOKEN_NAME} is the name of the token in the coordinator's admin.token; choose another name"
                ),
            ));
        }
        if let Some(ttl) = request.ttl
            && (ttl.as_millis() < 1000 || ttl > Duration::from_secs(MAX_ADMIN_TOKEN_TTL_DAYS * 86_400))
        {
            return Err(ServiceError::Invalid(
                "bad_ttl",
                format!("--ttl must be between 1s and {MAX_ADMIN_TOKEN_TTL_DAYS}d (or absent: valid until revoked)"),
            ));
        }
        let _changing = self.admin_token_changes.lock().await;
        let now = self.now();
        let existing = self
            .admin_tokens
            .read()
            .iter()
            .find(|token| token.name == request.name && token.revoked_at.is_none())
            .cloned();
        if let Some(existing) = existing.as_ref().filter(|token| !token.expired(now)) {
            return Err(ServiceError::Conflicting(
                "admin_token_exists",
                format!(
                    "an admin token named {} exists (created {} by {}); revoke it first or choose another name",
                    existing.name, existing.created_at, existing.created_by
                ),
            ));
        }
        let secret = crate::datadir::new_secret();
        let record = AdminTokenRecord {
            name: request.name,
            hash: hash_secret(&secret),
            created_at: now,
            created_by: operator.name().to_owned(),
            expires_at: request.ttl.map(|ttl| now.plus(ttl)),
            revoked_at: None,
            revoked_by: None,
            last_used_at: None,
        };
        let what = super::audit::admin_token_created(&record.name, record.expires_at);
        let change = super::audit::admin_change(now, operator, None, what, reason);
        self.store
            .insert_admin_token(&record, &change)
            .await
            .during("creating an admin token")?;
        let mut tokens = self.admin_tokens.write();
        if let Some(expired) = existing.and_then(|expired| tokens.iter_mut().find(|token| token.hash == expired.hash)) {
            expired.revoked_at = Some(now);
            expired.revoked_by = Some(record.created_by.clone());
        }
        tokens.push(record.clone());
        Ok(AdminTokenCreated {
            name: record.name,
            token: secret,
            created_at: now,
            expires_at: record.expires_at,
        })
    }

    /// `drover admin-token list`: every admin token, revoked ones too, oldest first.
    pub fn admin_tokens(&self) -> Vec<AdminTokenInfo> {
        let now = self.now();
        self.admin_tokens
            .read()
            .iter()
            .map(|token| admin_token_info(token, now))
            .collect()
    }

    /// `drover admin-token revoke`: requests with the token are refused from now on.
    /// Refused (409) for the last valid token, which would lock every operator out.
    pub async fn revoke_admin_token(
        &self,
        name: &TokenName,
        operator: &Operator,
        reason: Option<&str>,
    ) -> Result<AdminTokenInfo, ServiceError> {
        let reason = super::audit::checked_reason(reason)?;
        let _changing = self.admin_token_changes.lock().await;
        let now = self.now();
        let (target, others_valid, ever) = {
            let tokens = self.admin_tokens.read();
            let target = tokens
                .iter()
                .find(|token| &token.name == name && token.revoked_at.is_none())
                .cloned();
            let others_valid = tokens
                .iter()
                .filter(|token| &token.name != name && token.valid(now))
                .count();
            let ever = tokens.iter().any(|token| &token.name == name);
            (target, others_valid, ever)
        };
        let Some(target) = target else {
            return Err(if ever {
                ServiceError::Conflicting(
                    "admin_token_revoked",
                    format!("the admin token {name} is already revoked"),
                )
            } else {
                ServiceError::Unknown(
                    "admin_token_not_found",
                    format!("no admin token named {name}; see drover admin-token list"),
                )
            });
        };
        if target.valid(now) && others_valid == 0 {
            return Err(ServiceError::Conflicting(
                "last_admin_token",
                format!(
                    "{name} is the last valid admin token; create another first (drover admin-token create NAME), or nobody could use the admin API"
                ),
            ));
        }
        let change = super::audit::admin_change(now, operator, None, super::audit::admin_token_revoked(name), reason);
        if !self
            .store
            .revoke_admin_token(name, now, operator.name(), &change)
            .await
            .during("revoking an admin token")?
        {
            return Err(ServiceError::Conflicting(
                "admin_token_revoked",
                format!("the admin token {name} is already revoked"),
            ));
        }
        let mut tokens = self.admin_tokens.write();
        let record = tokens
            .iter_mut()
            .find(|token| token.hash == target.hash)
            .expect("looked up above");
        record.revoked_at = Some(now);
        record.revoked_by = Some(operator.name().to_owned());
        Ok(admin_token_info(record, now))
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::api::{AdminTokenRequest, AdminTokenState, BOOTSTRAP_TOKEN_NAME};
    use drover_protocol::{Duration, Timestamp};

    use super::{admin_token_info, check_reason};
    use crate::server::service::testing::{code, coordinator, name, operator};
    use crate::server::store::AdminTokenRecord;

    #[test]
    fn a_reason_is_trimmed_an_empty_one_is_none_and_a_long_one_refused() {
        assert_eq!(check_reason(None).expect("none"), None);
        assert_eq!(check_reason(Some("   ")).expect("blank"), None);
        assert_eq!(
            check_reason(Some("  disk full on web-3 ")).expect("reason"),
            Some("disk full on web-3".to_owned())
        );
        assert!(
            check_reason(Some(&"é".repeat(500))).is_ok(),
            "500 characters, not bytes"
        );
        let error = check_reason(Some(&"x".repeat(501))).expect_err("too long");
        assert_eq!(code(&error), "bad_reason");
    }

    #[test]
    fn a_token_is_active_then_expired_and_revoked_wins() {
        let created = Timestamp::from_unix(1_000_000);
        let mut token = AdminTokenRecord {
            name: name("ci"),
            hash: "00".repeat(32),
            created_at: created,
            created_by: "admin".to_owned(),
            expires_at: Some(created.plus(Duration::from_secs(60))),
            revoked_at: None,
            revoked_by: None,
            last_used_at: None,
        };
        assert_eq!(admin_token_info(&token, created).state, AdminTokenState::Active);
        let later = created.plus(Duration::from_secs(60));
        assert_eq!(admin_token_info(&token, later).state, AdminTokenState::Expired);
        token.revoked_at = Some(created);
        assert_eq!(admin_token_info(&token, later).state, AdminTokenState::Revoked);
    }

    #[tokio::test]
    async fn check_admin_names_the_token_and_refuses_missing_wrong_and_revoked_ones() {
        let test = coordinator().await;
        let service = &test.coordinator;
        let admin = service
            .check_admin(Some(&test.admin_secret))
            .await
            .expect("bootstrap token");
        assert_eq!(admin.name(), BOOTSTRAP_TOKEN_NAME);
        assert_eq!(
            code(&service.check_admin(None).await.expect_err("missing")),
            "admin_token_missing"
        );
        assert_eq!(
            code(&service.check_admin(Some("not-a-token")).await.expect_err("wrong")),
            "admin_token_invalid"
        );
        let created = service
            .create_admin_token(
                AdminTokenRequest {
                    name: name("ci"),
                    ttl: None,
                },
                &admin,
                None,
            )
            .await
            .expect("create");
        assert_eq!(
            service.check_admin(Some(&created.token)).await.expect("ci").name(),
            "ci"
        );
        service
            .revoke_admin_token(&name("ci"), &admin, None)
            .await
            .expect("revoke");
        assert_eq!(
            code(&service.check_admin(Some(&created.token)).await.expect_err("revoked")),
            "admin_token_revoked"
        );
    }

    #[tokio::test]
    async fn admin_token_names_are_unique_and_the_last_valid_token_stays() {
        let test = coordinator().await;
        let service = &test.coordinator;
        let error = service
            .create_admin_token(
                AdminTokenRequest {
                    name: name(BOOTSTRAP_TOKEN_NAME),
                    ttl: None,
                },
                &operator(),
                None,
            )
            .await
            .expect_err("reserved");
        assert_eq!(code(&error), "reserved_token_name");
        let error = service
            .create_admin_token(
                AdminTokenRequest {
                    name: name("ci"),
                    ttl: Some(Duration::from_millis(500)),
                },
                &operator(),
                None,
            )
            .await
            .expect_err("ttl under a second");
        assert_eq!(code(&error), "bad_ttl");
        let error = service
            .revoke_admin_token(&name(BOOTSTRAP_TOKEN_NAME), &operator(), None)
            .await
            .expect_err("the last valid token");
        assert_eq!(code(&error), "last_admin_token");
        let error = service
            .revoke_admin_token(&name("nobody"), &operator(), None)
            .await
            .expect_err("unknown");
        assert_eq!(code(&error), "admin_token_not_found");
        assert_eq!(service.admin_tokens().len(), 1, "nothing was created or revoked");
    }
}
