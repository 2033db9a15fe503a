//! Releases: immutable (app, version) → artifact + spec, checked as agents check them.

use drover_protocol::api::{CoordinatorSettings, Release, ReleaseArtifact, ReleaseRequest};
use drover_protocol::manifest::HttpUrl;
use drover_protocol::spec::ArtifactKind;
use drover_protocol::{AppName, Artifact, Digest, Version};

use super::Coordinator;
use super::error::{During as _, ServiceError};

impl Coordinator {
    /// What the CLI needs to know of this coordinator's settings.
    pub fn settings(&self) -> CoordinatorSettings {
        CoordinatorSettings {
            artifact_registry: self.config.artifact_registry.clone(),
        }
    }

    /// Whether tarballs may be uploaded to this coordinator's blob store: not when
    /// several coordinators share the database (PostgreSQL), since replicas share no disk
    /// and a host could ask a replica that never saw the upload. A registry holds the
    /// tarballs then (`drover release create --artifact FILE --registry REGISTRY/REPO`, or
    /// with no `--registry` when the coordinators are started with `--artifact-registry`).
    pub fn accepts_uploads(&self) -> Result<(), ServiceError> {
        if self.store.is_shared() {
            return Err(ServiceError::Conflicting(
                "uploads_need_a_registry",
                "this coordinator keeps its state in PostgreSQL, where coordinators share no disk, so it stores no \
                 uploaded tarballs: push the tarball to an OCI registry instead with \
                 `drover release create APP VERSION --spec drover.toml --artifact FILE --registry REGISTRY/REPO` \
                 (or set DROVER_REGISTRY; or start every coordinator with                  `--artifact-registry REGISTRY/PREFIX` and drover release create pushes there by itself),                  or give an https:// URL the hosts can download it from"
                    .into(),
            ));
        }
        Ok(())
    }

    /// `drover release create`. Releases are immutable: the same version with other
    /// content is refused; the identical request again is accepted (idempotent).
    pub async fn create_release(&self, request: ReleaseRequest) -> Result<Release, ServiceError> {
        let kind = match &request.artifact {
            ReleaseArtifact::StoredTarball { .. }
            | ReleaseArtifact::RemoteTarball { .. }
            | ReleaseArtifact::RegistryTarball { .. } => ArtifactKind::Tarball,
            ReleaseArtifact::Image { .. } => ArtifactKind::Image,
        };
        // The agent runs this same check on every manifest: what passes here runs there.
        if let Err(error) = request.spec.check(kind) {
            let code = if kind == ArtifactKind::Tarball && request.spec.service.command.is_none() {
                "command_required"
            } else {
                "bad_spec"
            };
            return Err(ServiceError::Invalid(
                code,
                format!("release {} {}: {error}", request.app, request.version),
            ));
        }
        let artifact = match request.artifact {
            ReleaseArtifact::StoredTarball { digest } => {
                let size = crate::server::blobs::size_of(&self.data.blobs(), &digest)?.ok_or_else(|| {
                    ServiceError::Unknown(
                        "artifact_not_found",
                        format!("no uploaded artifact {digest}; upload it first (drover release create --artifact FILE does)"),
                    )
                })?;
                self.check_uploaded_program(&request.app, &request.version, &request.spec, &digest)
                    .await?;
                let url = HttpUrl::try_from(format!("{}/v1/artifacts/{digest}", self.config.public_url))
                    .map_err(|error| ServiceError::Invalid("bad_public_url", error.to_string()))?;
                Artifact::Tarball { url, digest, size }
            }
            ReleaseArtifact::RemoteTarball { url, digest, size } => Artifact::Tarball { url, digest, size },
            ReleaseArtifact::Image { reference } => {
                crate::reference::check_pinned(&reference).map_err(|problem| {
                    ServiceError::Invalid(
                        "bad_image_reference",
                        format!("image reference {}: {problem}", reference.as_str()),
                    )
                })?;
                Artifact::Oci {
                    digest: reference.digest(),
                    reference,
                }
            }
            // Pushed by the CLI, which checked the program before pushing; the
            // coordinator never talks to the registry (the agent checks the artifact
            // manifest names exactly this digest and size).
            ReleaseArtifact::RegistryTarball {
                reference,
                digest,
                size,
            } => {
                crate::reference::check_pinned(&reference).map_err(|problem| {
                    ServiceError::Invalid(
                        "bad_artifact_reference",
                        format!("artifact reference {}: {problem}", reference.as_str()),
                    )
                })?;
                Artifact::OciTarball {
                    reference,
                    digest,
                    size,
                }
            }
        };
        let release = Release {
            app: request.app,
            version: request.version,
            artifact,
            spec: request.spec,
            created_at: self.now(),
        };
        let mut model = self.model().await;
        let key = (release.app.clone(), release.version.clone());
        if let Some(existing) = model.fleet.releases.get(&key) {
            if existing.artifact == release.artifact && existing.spec == release.spec {
                return Ok(existing.clone());
            }
            return Err(ServiceError::Conflicting(
                "release_exists",
                format!(
                    "release {} {} already exists with another artifact or spec (digest {}); releases are immutable: use a new version",
                    release.app,
                    release.version,
                    existing.artifact.digest()
                ),
            ));
        }
        self.store
            .insert_release(&release)
            .await
            .during("recording a release")?;
        model.fleet.releases.insert(key, release.clone());
        Ok(release)
    }

    /// Refuses a release made from an upload whose tarball lacks the spec's program, or
    /// whose program the app's user cannot execute (400 `program_not_in_tarball`,
    /// `program_not_executable`, `not_a_tarball`): the check `drover release create` runs
    /// before uploading ([`crate::tarball_check`]), here for every client. The same release
    /// created again is not checked again (its answer is the existing release); a check
    /// stopped by its limits is logged and the release accepted.
    pub(super) async fn check_uploaded_program(
        &self,
        app: &AppName,
        version: &Version,
        spec: &drover_protocol::AppSpec,
        digest: &Digest,
    ) -> Result<(), ServiceError> {
        let created_before = {
            let model = self.model().await;
            model
                .fleet
                .releases
                .get(&(app.clone(), version.clone()))
                .is_some_and(|existing| existing.artifact.digest() == digest && &existing.spec == spec)
        };
        if created_before {
            return Ok(());
        }
        let path = crate::server::blobs::path_of(&self.data.blobs(), digest);
        let owned_spec = spec.clone();
        let checked = tokio::task::spawn_blocking(move || {
            crate::tarball_check::check_program(&owned_spec, || std::fs::File::open(&path).map(std::io::BufReader::new))
        })
        .await
        .map_err(|error| ServiceError::Io {
            operation: "checking an uploaded artifact",
            source: std::io::Error::other(error.to_string()),
        })?;
        match checked {
            Ok(crate::tarball_check::Checked::Inconclusive(reason)) => {
                tracing::warn!(%app, %version, %digest, "release created without checking its program: {reason}");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(crate::tarball_check::ProgramProblem::Io(detail)) => Err(ServiceError::Io {
                operation: "reading an uploaded artifact",
                source: std::io::Error::other(detail),
            }),
            Err(problem) => Err(ServiceError::Invalid(
                problem.code(),
                format!("release {app} {version}: uploaded artifact {digest}: {problem}"),
            )),
        }
    }

    /// `drover release list APP`, newest first.
    pub async fn releases(&self, app: &AppName) -> Vec<Release> {
        let model = self.model().await;
        let mut releases: Vec<Release> = model
            .fleet
            .releases
            .values()
            .filter(|release| &release.app == app)
            .cloned()
            .collect();
        releases.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.version.cmp(&a.version)));
        releases
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::AppName;

    use crate::server::service::testing::{code, coordinator, name, release_request};

    #[tokio::test]
    async fn releases_are_immutable_and_the_same_request_again_is_accepted() {
        let test = coordinator().await;
        let service = &test.coordinator;
        let first = service
            .create_release(release_request("web", "1.0.0", "bin/app"))
            .await
            .expect("create");
        let again = service
            .create_release(release_request("web", "1.0.0", "bin/app"))
            .await
            .expect("the identical request again");
        assert_eq!(first, again);
        let error = service
            .create_release(release_request("web", "1.0.0", "bin/other"))
            .await
            .expect_err("other spec");
        assert_eq!(code(&error), "release_exists");
        service
            .create_release(release_request("web", "1.1.0", "bin/app"))
            .await
            .expect("next version");
        let versions: Vec<String> = service
            .releases(&name::<AppName>("web"))
            .await
            .iter()
            .map(|release| release.version.to_string())
            .collect();
        assert_eq!(versions.len(), 2);
        assert!(versions.contains(&"1.0.0".to_owned()) && versions.contains(&"1.1.0".to_owned()));
        assert!(service.releases(&name::<AppName>("api")).await.is_empty());
    }

    #[tokio::test]
    async fn an_upload_must_exist_and_a_spec_agents_refuse_is_refused() {
        let test = coordinator().await;
        let service = &test.coordinator;
        let mut request = release_request("web", "1.0.0", "bin/app");
        request.artifact = drover_protocol::api::ReleaseArtifact::StoredTarball {
            digest: drover_protocol::Digest::of(b"never uploaded"),
        };
        assert_eq!(
            code(&service.create_release(request).await.expect_err("no upload")),
            "artifact_not_found"
        );
        let mut request = release_request("web", "1.0.0", "bin/app");
        request.spec.service.command = None;
        assert_eq!(
            code(&service.create_release(request).await.expect_err("no command")),
            "command_required"
        );
        assert!(service.releases(&name::<AppName>("web")).await.is_empty());
    }
}
