//! Shared test support: generated keys, trust documents and manifests (fixtures made
//! fresh by each test, so no private key is ever committed), and the paths of the built
//! `drover` and `drover-agent` binaries for CLI tests.

pub mod e2e;
pub mod fleet;
pub mod hosts;
pub mod net;
pub mod registry;
pub mod replicas;
pub mod rootfs_tree;
pub mod sim;

use std::path::PathBuf;

use drover_protocol::manifest::HttpUrl;
use drover_protocol::trust::{RoleKeys, TRUST_SCHEMA};
use drover_protocol::{
    AppName, AppRelease, AppSpec, Artifact, Digest, Duration, HostId, MANIFEST_SCHEMA, Manifest, Rejection, SigningKey,
    Timestamp, Trust, TrustDocument, Version,
};

/// A release tarball (tar.gz) that holds `bin/app` (0755, the program of the specs the
/// fixtures use) and `payload` as `data`: the artifact of a test release whose contents
/// do not matter, real enough for the coordinator's program check.
pub fn app_tarball(payload: &[u8]) -> Vec<u8> {
    tarball_with_program("bin/app", 0o755, payload)
}

/// A release tarball (tar.gz) holding `program` with `mode` and `payload` as `data`. The
/// same arguments give the same bytes (fixed times and owners), so the same release can
/// be made twice; gzip stores without compressing, so the size follows the payload.
pub fn tarball_with_program(program: &str, mode: u32, payload: &[u8]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    let mut builder = tar::Builder::new(encoder);
    for (path, mode, content) in [(program, mode, &b"#!/bin/sh\nexit 0\n"[..]), ("data", 0o644, payload)] {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mode(mode);
        header.set_size(content.len() as u64);
        builder
            .append_data(&mut header, path, content)
            .expect("append to an in-memory tarball");
    }
    let encoder = builder.into_inner().expect("finish the tar stream");
    encoder.finish().expect("finish the gzip stream")
}

/// The fixed clock of every pure test: 2026-11-27T12:00:00Z.
pub fn now() -> Timestamp {
    "2026-11-27T12:00:00Z".parse().expect("valid timestamp")
}

/// The real clock, for tests against servers that read it themselves.
pub fn now_real() -> Timestamp {
    Timestamp::from_system(std::time::SystemTime::now())
}

/// A fresh ed25519 key.
pub fn key() -> SigningKey {
    SigningKey::generate(&ring::rand::SystemRandom::new())
        .expect("system random source")
        .0
}

/// A host id from a literal.
pub fn host(id: &str) -> HostId {
    id.parse().expect("valid host id")
}

/// A set of keys with a signed trust document over them.
#[derive(Debug)]
pub struct Keys {
    /// Root keys, in order.
    pub roots: Vec<SigningKey>,
    /// Manifest keys, in order.
    pub manifest_keys: Vec<SigningKey>,
    /// The trust document they form.
    pub document: TrustDocument,
}

impl Keys {
    /// `roots` root keys with `root_threshold`, `manifests` manifest keys with `manifest_threshold`,
    /// trust version 1 valid for a year from [`now`].
    pub fn new(roots: usize, root_threshold: u32, manifests: usize, manifest_threshold: u32) -> Keys {
        let roots: Vec<SigningKey> = (0..roots).map(|_| key()).collect();
        let manifest_keys: Vec<SigningKey> = (0..manifests).map(|_| key()).collect();
        let document = TrustDocument {
            schema: TRUST_SCHEMA,
            version: 1,
            expires_at: now().plus(Duration::from_secs(365 * 86_400)),
            root: RoleKeys::of(
                &roots.iter().map(SigningKey::public_key).collect::<Vec<_>>(),
                root_threshold,
            ),
            manifest: RoleKeys::of(
                &manifest_keys.iter().map(SigningKey::public_key).collect::<Vec<_>>(),
                manifest_threshold,
            ),
        };
        Keys {
            roots,
            manifest_keys,
            document,
        }
    }

    /// One root key, one manifest key, thresholds 1.
    pub fn simple() -> Keys {
        Keys::new(1, 1, 1, 1)
    }

    /// The trust document signed by every root key.
    pub fn trust_envelope(&self) -> Vec<u8> {
        self.document.sign(&self.roots.iter().collect::<Vec<_>>())
    }

    /// The verified trust (bootstrapped at [`now`]).
    pub fn trust(&self) -> Trust {
        Trust::bootstrap(&self.trust_envelope(), now()).expect("fixture trust is valid")
    }

    /// `manifest` signed by every manifest key.
    pub fn sign(&self, manifest: &Manifest) -> Vec<u8> {
        manifest.sign(&self.manifest_keys.iter().collect::<Vec<_>>())
    }
}

/// A minimal but complete app spec.
pub fn app_spec() -> AppSpec {
    serde_json::from_str(
        r#"{"service":{"command":["bin/app","--port","8080"],"environment":{"PORT":"8080"}},
            "health":{"checks":[{"kind":"http","url":"http://127.0.0.1:8080/healthz"}]}}"#,
    )
    .expect("valid spec")
}

/// A manifest for `host_id` with `serial`, issued at [`now`], valid for a day, with
/// `apps` tarball apps named `app-0`, `app-1`, ...
pub fn manifest(host_id: &str, serial: u64, apps: usize) -> Manifest {
    let apps = (0..apps)
        .map(|index| {
            let name: AppName = format!("app-{index}").parse().expect("valid app name");
            let digest = Digest::of(format!("artifact {index}").as_bytes());
            let url = HttpUrl::try_from(format!("https://coordinator.example:8443/v1/artifacts/{digest}"))
                .expect("valid url");
            let release = AppRelease {
                version: "1.4.2".parse::<Version>().expect("valid version"),
                artifact: Artifact::Tarball {
                    url,
                    digest,
                    size: 10_485_760,
                },
                spec: app_spec(),
            };
            (name, release)
        })
        .collect();
    Manifest {
        schema: MANIFEST_SCHEMA,
        host: host(host_id),
        serial,
        issued_at: now(),
        expires_at: now().plus(Duration::from_secs(86_400)),
        hold: false,
        apps,
    }
}

/// Standard base64 with padding, as DSSE envelopes use it.
pub fn base64_encode(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

/// Decodes standard base64 that the test itself produced.
pub fn base64_decode(text: &str) -> Vec<u8> {
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text).expect("test input is valid base64")
}

/// Unwraps a rejection and checks that its message names every fragment (so an operator
/// reading only the message learns what was wrong) and is one line without control
/// characters.
pub fn expect_rejection<T: std::fmt::Debug>(result: Result<T, Rejection>, fragments: &[&str]) -> Rejection {
    let rejection = result.expect_err("the document must be rejected");
    let message = rejection.to_string();
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "message {message:?} should mention {fragment:?}"
        );
    }
    assert!(
        !message.chars().any(char::is_control),
        "message {message:?} should be one line without control characters"
    );
    rejection
}

/// The path of a workspace binary (`drover`, `drover-agent`) in the same target
/// directory as the running test. The test command builds them first
/// (`cargo build --workspace --bins`); a missing binary fails loudly instead of
/// silently testing nothing.
pub fn binary(name: &str) -> PathBuf {
    let test_executable = std::env::current_exe().expect("path of the test executable");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let profile_directory = test_executable
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_directory.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the CLI tests (the README's test command does)",
        path.display()
    );
    path
}

/// Runs `future` to completion on a fresh current-thread runtime, for the synchronous
/// tests that drive the CLI or a registry between async steps.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// A `NAME:  N kB` line of `/proc/PID/status` in KiB (`pid` may be `self`), for the
/// benchmarks' memory figures (`VmRSS`, `VmHWM`, `RssAnon`, ...).
pub fn proc_status_kib(pid: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
