//! Enrollment and host identity: join tokens, `join`, certificate renewal, and
//! [`Coordinator::host_slot`], which proves each agent request's client certificate.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use drover_protocol::api::{HostHistoryEntry, JoinRequest, JoinResponse, RenewResponse, TokenRequest, TokenResponse};
use drover_protocol::{Duration, Timestamp};

use super::admin::Operator;
use super::desired::{RenderMode, Rendered, check_manifests};
use super::error::{During as _, ServiceError};
use super::hosts::check_labels;
use super::{Coordinator, HOST_RENEWAL_ACTOR, HostSlot, Published, hash_secret};
use crate::server::metrics::CertificateExpiry;
use crate::server::pki::PeerIdentity;
use crate::server::store::{HostChange, HostRecord, TokenProblem};
use crate::text::labels_text;

pub(super) fn token_error(problem: TokenProblem) -> ServiceError {
    match problem {
        TokenProblem::Unknown => ServiceError::Unauthenticated("token_unknown", "the join token is not valid".into()),
        TokenProblem::Used => ServiceError::Expired(
            "token_used",
            "the join token was already used; create a new one with drover token create".into(),
        ),
        TokenProblem::Expired => ServiceError::Expired(
            "token_expired",
            "the join token expired; create a new one with drover token create".into(),
        ),
    }
}

impl Coordinator {
    /// The live slot of the host a client certificate names, refusing removed hosts and
    /// certificates that are no longer the host's (replaced by a re-join).
    pub fn host_slot(&self, identity: Option<&PeerIdentity>) -> Result<Arc<HostSlot>, ServiceError> {
        let Some(identity) = identity else {
            return Err(ServiceError::Unauthenticated(
                "client_certificate_required",
                "agent endpoints need the host's client certificate (join first)".into(),
            ));
        };
        let slot = self.slots.read().get(&identity.host).cloned();
        match slot {
            Some(slot) if slot.identity.read().proves(identity) => {
                slot.last_seen.store(self.now().unix(), Ordering::Relaxed);
                self.learn_key(&slot, identity);
                Ok(slot)
            }
            Some(_) => Err(ServiceError::NotAllowed(
                "certificate_replaced",
                format!(
                    "host {} re-joined with a new key; this certificate is no longer valid",
                    identity.host
                ),
            )),
            None => Err(ServiceError::NotAllowed(
                "host_removed",
                format!(
                    "host {} is not enrolled (removed); to bring it back, join it with a token from `drover token create --replace {}`",
                    identity.host, identity.host
                ),
            )),
        }
    }

    /// [`Coordinator::host_slot`] for the agent endpoints: when several coordinators share
    /// the database and this one does not know the host's key (yet), it first catches up
    /// with the database's model, so a host that joined (or was re-joined) through
    /// another replica a moment ago is served here at once instead of being told it was
    /// removed. A host truly removed costs one read of the database's model generation
    /// per request, and never the database's model lock (which every change through any
    /// replica waits for) unless the model did move; it does wait for this replica's own
    /// model mutex, since a catch-up in progress has noted the new generation before it
    /// made the new host's slot.
    pub async fn host_slot_current(&self, identity: Option<&PeerIdentity>) -> Result<Arc<HostSlot>, ServiceError> {
        match self.host_slot(identity) {
            Err(ServiceError::NotAllowed(_, _)) if self.store.is_shared() => {
                let behind = match self.store.database_generation().await {
                    Ok(generation) => generation != self.store.seen_generation(),
                    // Unknown: catch up to be sure (the lock says what is wrong, if anything).
                    Err(_) => true,
                };
                if behind {
                    drop(self.model().await);
                } else {
                    drop(self.model.lock().await);
                }
                self.host_slot(identity)
            }
            outcome => outcome,
        }
    }

    /// For a host enrolled before keys were recorded: its first request proves the key
    /// (the certificate is the one recorded), so the key and expiry are kept from now on,
    /// in memory at once and in the store in the background (a failed write is retried
    /// by the next start's first request).
    pub(super) fn learn_key(&self, slot: &HostSlot, identity: &PeerIdentity) {
        {
            let mut known = slot.identity.write();
            if known.key_sha256.is_some() || known.cert_sha256 != identity.fingerprint {
                return;
            }
            known.key_sha256 = Some(identity.key_sha256.clone());
            known.not_after = Some(identity.not_after);
        }
        let store = self.store.clone();
        let identity = identity.clone();
        tokio::spawn(async move {
            if let Err(error) = store
                .record_host_key(
                    &identity.host,
                    &identity.fingerprint,
                    &identity.key_sha256,
                    identity.not_after,
                )
                .await
            {
                tracing::warn!(%error, host = %identity.host, "recording the key of a host enrolled by an older coordinator failed; it is retried after the next restart");
            }
        });
    }

    /// When each enrolled host's newest certificate expires, summed up for `/metrics`.
    pub fn certificate_expiry(&self, now: Timestamp) -> CertificateExpiry {
        let mut expiry = CertificateExpiry::default();
        for slot in self.slots.read().values() {
            if let Some(not_after) = slot.identity.read().not_after {
                expiry.add(not_after, now);
            }
        }
        expiry
    }

    /// `drover token create`.
    pub async fn create_token(
        &self,
        request: TokenRequest,
        operator: &Operator,
    ) -> Result<TokenResponse, ServiceError> {
        if request.ttl.as_millis() == 0 || request.ttl > Duration::from_secs(30 * 86_400) {
            return Err(ServiceError::Invalid(
                "bad_ttl",
                "--ttl must be between 1s and 30d".into(),
            ));
        }
        check_labels(&request.labels)?;
        if let Some(problem) = self.config.loopback_trap.as_deref().filter(|_| !request.allow_loopback) {
            return Err(ServiceError::Invalid(
                drover_protocol::api::LOOPBACK_PUBLIC_URL,
                format!(
                    "refusing to make a join line that works only on this machine: {problem}. Or pass --allow-loopback to get it anyway"
                ),
            ));
        }
        let now = self.now();
        let token = crate::datadir::new_secret();
        let expires_at = now.plus(request.ttl);
        self.store
            .insert_token(
                &hash_secret(&token),
                &request.labels,
                request.replace.as_ref(),
                operator.name(),
                expires_at,
                now,
            )
            .await
            .during("creating a join token")?;
        let join_command = format!(
            "drover-agent join {} --token={token} --ca-sha256 {}",
            self.config.public_url,
            self.credentials.ca.sha256()
        );
        Ok(TokenResponse {
            token,
            expires_at,
            join_command,
        })
    }

    /// `POST /v1/join`. A plain token enrolls only a host id never used; a token from
    /// `--replace HOST` enrolls only HOST, taking it over from its old key when enrolled
    /// or bringing a removed id back. Either way the id keeps its serial, host pins and
    /// holds, and the join is in the id's history. A refused join leaves the token unused.
    pub async fn join(&self, request: JoinRequest) -> Result<JoinResponse, ServiceError> {
        let now = self.now();
        let token_hash = hash_secret(&request.token);
        let token = self
            .store
            .check_token(&token_hash, now)
            .await
            .during("checking a join token")?
            .map_err(token_error)?;
        let id = &request.host_id;
        if let Some(target) = &token.replace
            && target != id
        {
            return Err(ServiceError::NotAllowed(
                "token_for_another_host",
                format!(
                    "this token may only re-enroll host {target}, not {id}; it is still unused. To enroll {id}, create a token for it (with --replace {id} if the id is taken)"
                ),
            ));
        }
        let issued = self
            .credentials
            .ca
            .issue_host(id, &request.csr_pem, None, now, self.config.host_certificate_validity)
            .map_err(|error| ServiceError::Invalid("bad_csr", error.to_string()))?;

        let mut model = self.model().await;
        let before = model.fleet.hosts.get(id);
        let change = match (before, &token.replace) {
            (None, _) => HostChange::Joined,
            (Some(host), Some(_)) if host.is_active() => HostChange::Replaced,
            (Some(_), Some(_)) => HostChange::Rejoined,
            (Some(host), None) if host.is_active() => {
                let older = if token.replace_any {
                    " (this token was made by an older drover as \"replace any host\", which is no longer honoured)"
                } else {
                    ""
                };
                return Err(ServiceError::Conflicting(
                    "host_exists",
                    format!(
                        "host id {id} is already enrolled{older}; to re-enroll it (a reinstalled machine), create a token with `drover token create --replace {id}`; the token is still unused"
                    ),
                ));
            }
            (Some(_), None) => {
                return Err(ServiceError::Conflicting(
                    "host_id_removed",
                    format!(
                        "host id {id} was removed; its id is reused only on purpose, because it keeps the id's host pins and holds: create a token with `drover token create --replace {id}`, or join under a new id; the token is still unused"
                    ),
                ));
            }
        };
        let old_certificate = before.and_then(|host| host.cert_sha256.clone());
        let who = token.created_by.clone().unwrap_or_else(|| "join token".to_owned());
        let what = match change {
            HostChange::Replaced => {
                "re-joined with a new key (a --replace token); the old key and its certificates stop working".to_owned()
            }
            HostChange::Rejoined => {
                "joined again after its removal (a --replace token), keeping the id's host pins and holds".to_owned()
            }
            _ => "joined with a join token".to_owned(),
        };
        let history = HostHistoryEntry {
            at: now,
            who,
            what: format!("{what}; labels {}", labels_text(&token.labels)),
            old_certificate,
            new_certificate: Some(issued.sha256.clone()),
        };
        let record = HostRecord {
            id: id.clone(),
            labels: token.labels.clone(),
            cert_sha256: Some(issued.sha256.clone()),
            key_sha256: Some(issued.key_sha256.clone()),
            cert_not_after: Some(issued.not_after),
            joined_at: now,
        };
        let previous = model.fleet.hosts.insert(record.id.clone(), record.clone());
        // A re-join gets a new serial even when nothing changed (Force).
        let manifests = self.render(&model, std::slice::from_ref(&record), now, RenderMode::Force);
        // The pins its labels bring could give it a manifest its agent would refuse: the
        // join fails (the token stays unused) rather than enrolling a host that can never
        // apply anything.
        let what = format!("joining host {} with labels {:?}", record.id, record.labels);
        if let Err(error) = check_manifests(&model.fleet, &manifests, &what) {
            match previous {
                Some(previous) => model.fleet.hosts.insert(record.id.clone(), previous),
                None => model.fleet.hosts.remove(&record.id),
            };
            return Err(error);
        }
        let manifest = manifests.first().expect("a joining host is always rendered").clone();
        let stored = self
            .store
            .join_host(&token_hash, &record, &manifest, (change, &history), now)
            .await;
        if !matches!(stored, Ok(Ok(()))) {
            // Nothing was committed (another join used the token first, or the store
            // failed): put the model back as it was.
            match previous {
                Some(previous) => model.fleet.hosts.insert(record.id.clone(), previous),
                None => model.fleet.hosts.remove(&record.id),
            };
            return Err(match stored {
                Ok(Err(problem)) => token_error(problem),
                Err(source) => ServiceError::Store {
                    operation: "recording a join",
                    source,
                },
                Ok(Ok(())) => unreachable!("matched above"),
            });
        }
        model.rendered.insert(record.id.clone(), Rendered::of(&manifest));
        let resolved = model.fleet.resolve(&record);
        let published = Arc::new(Published::of(&manifest, &resolved, &model.fleet));
        let slot = HostSlot::new(&record, published, now.unix());
        // Replacing the slot drops the old sender: long-polls on the old certificate end.
        self.slots.write().insert(record.id.clone(), slot);
        self.reports.lock().remove(&record.id);
        self.metrics.joins.add(1);
        Ok(JoinResponse {
            host_id: record.id,
            certificate_pem: issued.pem,
            ca_pem: self.credentials.ca.cert_pem().to_owned(),
            trust: String::from_utf8_lossy(self.credentials.trust.envelope_bytes()).into_owned(),
            labels: record.labels,
        })
    }

    /// `POST /v1/agent/certificate`: a new certificate for the key of the certificate the
    /// host presented (`identity`, already proven by [`Coordinator::host_slot`]). The
    /// certificates it had stay valid until they expire: they carry the same key, so an
    /// agent that dies before writing the new one still gets in with the old one.
    pub async fn renew_certificate(
        &self,
        identity: &PeerIdentity,
        csr_pem: &str,
    ) -> Result<RenewResponse, ServiceError> {
        let now = self.now();
        let issued = self
            .credentials
            .ca
            .issue_host(
                &identity.host,
                csr_pem,
                Some(&identity.key_sha256),
                now,
                self.config.host_certificate_validity,
            )
            .map_err(|error| match error {
                crate::server::pki::PkiError::CsrKeyMismatch => {
                    ServiceError::Invalid("csr_key_mismatch", error.to_string())
                }
                crate::server::pki::PkiError::CsrHostMismatch { .. } => {
                    ServiceError::Invalid("csr_host_mismatch", error.to_string())
                }
                _ => ServiceError::Invalid("bad_csr", error.to_string()),
            })?;
        // Under the model lock, so a join or removal of this host cannot interleave.
        let mut model = self.model().await;
        let slot = self.host_slot(Some(identity))?;
        let old_certificate = slot.identity.read().cert_sha256.clone();
        let history = HostHistoryEntry {
            at: now,
            who: HOST_RENEWAL_ACTOR.to_owned(),
            what: format!("renewed its certificate (same key), valid until {}", issued.not_after),
            old_certificate: Some(old_certificate),
            new_certificate: Some(issued.sha256.clone()),
        };
        let recorded = self
            .store
            .renew_host(
                &identity.host,
                &issued.key_sha256,
                &issued.sha256,
                issued.not_after,
                &history,
            )
            .await
            .during("recording a renewed certificate")?;
        if !recorded {
            return Err(ServiceError::NotAllowed(
                "certificate_replaced",
                format!(
                    "host {} was removed or re-joined with a new key meanwhile; this certificate is no longer valid",
                    identity.host
                ),
            ));
        }
        {
            let mut known = slot.identity.write();
            known.key_sha256 = Some(issued.key_sha256.clone());
            known.cert_sha256 = issued.sha256.clone();
            known.not_after = Some(issued.not_after);
        }
        if let Some(record) = model.fleet.hosts.get_mut(&identity.host) {
            record.cert_sha256 = Some(issued.sha256.clone());
            record.key_sha256 = Some(issued.key_sha256.clone());
            record.cert_not_after = Some(issued.not_after);
        }
        self.metrics.certificate_renewals.add(1);
        tracing::info!(host = %identity.host, not_after = %issued.not_after, "renewed a host certificate");
        Ok(RenewResponse {
            certificate_pem: issued.pem,
            not_after: issued.not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::api::{JoinRequest, TokenRequest};
    use drover_protocol::{Duration, HostId};

    use super::token_error;
    use crate::server::clock::Clock;
    use crate::server::pki::make_host_csr;
    use crate::server::service::testing::{code, coordinator, facts, name, operator};
    use crate::server::store::TokenProblem;

    fn token_request(ttl: Duration, replace: Option<HostId>) -> TokenRequest {
        TokenRequest {
            labels: Default::default(),
            ttl,
            replace,
            allow_loopback: false,
        }
    }

    #[test]
    fn token_problems_map_to_their_codes() {
        assert_eq!(code(&token_error(TokenProblem::Unknown)), "token_unknown");
        assert_eq!(code(&token_error(TokenProblem::Used)), "token_used");
        assert_eq!(code(&token_error(TokenProblem::Expired)), "token_expired");
    }

    #[tokio::test]
    async fn a_join_token_is_refused_outside_1s_to_30d() {
        let test = coordinator().await;
        for ttl in [Duration::from_secs(0), Duration::from_secs(30 * 86_400 + 1)] {
            let error = test
                .coordinator
                .create_token(token_request(ttl, None), &operator())
                .await
                .expect_err("bad ttl");
            assert_eq!(code(&error), "bad_ttl");
        }
    }

    #[tokio::test]
    async fn a_token_enrolls_once_and_a_taken_id_needs_a_replace_token() {
        let test = coordinator().await;
        let service = &test.coordinator;
        let identity = test.join("web-1", &[("role", "web")]).await;
        let slot = service
            .host_slot(Some(&identity))
            .expect("the new certificate proves the host");
        assert_eq!(slot.subscribe().borrow().serial, 1);

        let token = service
            .create_token(token_request(Duration::from_secs(600), None), &operator())
            .await
            .expect("token");
        let join = |token: &str| JoinRequest {
            token: token.to_owned(),
            host_id: name("web-1"),
            csr_pem: make_host_csr(&name("web-1")).expect("csr").0,
            facts: facts(),
        };
        let error = service.join(join(&token.token)).await.expect_err("id taken");
        assert_eq!(code(&error), "host_exists");
        // The refused join left the token unused: it still enrolls another id.
        let mut other = join(&token.token);
        other.host_id = name("web-2");
        other.csr_pem = make_host_csr(&name("web-2")).expect("csr").0;
        service.join(other).await.expect("web-2 joins with the same token");
        let error = service.join(join(&token.token)).await.expect_err("used");
        assert_eq!(code(&error), "token_used");

        let replace = service
            .create_token(
                token_request(Duration::from_secs(600), Some(name("web-1"))),
                &operator(),
            )
            .await
            .expect("replace token");
        let replaced = service.join(join(&replace.token)).await.expect("re-join");
        assert_eq!(replaced.host_id.as_str(), "web-1");
        let error = service.host_slot(Some(&identity)).expect_err("the old key is out");
        assert_eq!(code(&error), "certificate_replaced");
        assert_eq!(
            code(&service.host_slot(None).expect_err("no certificate")),
            "client_certificate_required"
        );
    }

    #[tokio::test]
    async fn renewal_keeps_the_key_and_is_in_the_host_history() {
        let test = coordinator().await;
        let service = &test.coordinator;
        let host: HostId = name("web-1");
        let token = service
            .create_token(token_request(Duration::from_secs(600), None), &operator())
            .await
            .expect("token");
        let (csr_pem, key_pem) = make_host_csr(&host).expect("csr");
        let joined = service
            .join(JoinRequest {
                token: token.token,
                host_id: host.clone(),
                csr_pem,
                facts: facts(),
            })
            .await
            .expect("join");
        let identity = crate::server::pki::PeerIdentity::from_certificate(
            &crate::server::pki::certificate_der(&joined.certificate_pem).expect("pem"),
        )
        .expect("identity");
        let other_key = make_host_csr(&host).expect("csr").0;
        let error = service
            .renew_certificate(&identity, &other_key)
            .await
            .expect_err("another key");
        assert_eq!(code(&error), "csr_key_mismatch");
        let same_key = crate::server::pki::csr_for_key(&host, &key_pem).expect("csr");
        service.renew_certificate(&identity, &same_key).await.expect("renewal");
        // The old certificate carries the same key: it still proves the host.
        service.host_slot(Some(&identity)).expect("old certificate still valid");
        let history = service.host_history(&host).await.expect("history");
        assert!(
            history
                .iter()
                .any(|entry| entry.who == crate::server::service::HOST_RENEWAL_ACTOR),
            "{history:?}"
        );
    }

    #[tokio::test]
    async fn a_join_token_expires_by_the_coordinators_clock() {
        let test = coordinator().await;
        let service = &test.coordinator;
        let token = service
            .create_token(token_request(Duration::from_secs(600), None), &operator())
            .await
            .expect("token");
        assert_eq!(token.expires_at, test.clock.now().plus(Duration::from_secs(600)));
        let join = |host: &str| JoinRequest {
            token: token.token.clone(),
            host_id: name(host),
            csr_pem: make_host_csr(&name(host)).expect("csr").0,
            facts: facts(),
        };
        test.clock.advance(Duration::from_secs(600));
        let error = service.join(join("web-1")).await.expect_err("expired");
        assert_eq!(code(&error), "token_expired");
        // Back a second before its end, the same token still works: the clock decided.
        test.clock.set(token.expires_at.minus(Duration::from_secs(1)));
        service.join(join("web-1")).await.expect("join before expiry");
    }

    #[tokio::test]
    async fn a_hosts_last_seen_is_its_last_request_by_the_clock() {
        let test = coordinator().await;
        let service = &test.coordinator;
        let identity = test.join("web-1", &[]).await;
        let joined_at = test.clock.now();
        test.clock.advance(Duration::from_secs(3600));
        let summary = service.host(&name("web-1")).await.expect("host").summary;
        assert_eq!(summary.last_seen, Some(joined_at), "an hour without a request");
        service.host_slot(Some(&identity)).expect("a poll");
        let summary = service.host(&name("web-1")).await.expect("host").summary;
        assert_eq!(summary.last_seen, Some(test.clock.now()));
    }
}
