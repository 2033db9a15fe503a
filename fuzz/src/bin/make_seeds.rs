//! Writes the seed corpora of the fuzz targets into `fuzz/seeds/<target>/`: signed
//! manifests and trust documents made with the fixture's test keys, tarballs and OCI
//! layers (well-formed ones and the classic attacks), specs, reports and agent configs.
//! The first byte of a seed is the target's mode byte (see each target's docs).
//!
//! Run by `scripts/fuzz.sh seeds`; the output is deterministic and committed, so CI
//! never needs to run this.
//!
//! It is built like the targets, with coverage instrumentation, and instrumented code
//! only links together with libFuzzer; so this is a libFuzzer binary too, whose
//! initialisation writes the seeds and exits before any fuzzing starts.

#![no_main]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use drover_fuzz::{Fixture, fixture, join, now};
use drover_protocol::manifest::{AppRelease, Artifact, HttpUrl, MANIFEST_SCHEMA, Manifest, OciReference};
use drover_protocol::{AppSpec, Digest, Duration};
use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

libfuzzer_sys::fuzz_target!(init: write_seeds_and_exit(), |_data: &[u8]| {});

/// Writes the seeds into the directory named by the first argument (default
/// `fuzz/seeds`), then exits.
fn write_seeds_and_exit() {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds"));
    let fixture = fixture();
    let mut seeds = Seeds::default();
    manifests(fixture, &mut seeds);
    trust(fixture, &mut seeds);
    tarballs(&mut seeds);
    layers(&mut seeds);
    specs(&mut seeds);
    reports(&mut seeds);
    configs(&mut seeds);
    for (target, files) in seeds.0 {
        let dir = out.join(target);
        if dir.exists() {
            fs::remove_dir_all(&dir).expect("remove old seeds");
        }
        fs::create_dir_all(&dir).expect("create seed directory");
        for (name, bytes) in files {
            fs::write(dir.join(name), bytes).expect("write a seed");
        }
    }
    println!("seeds written to {}", out.display());
    std::process::exit(0);
}

#[derive(Default)]
struct Seeds(BTreeMap<&'static str, Vec<(String, Vec<u8>)>>);

impl Seeds {
    fn add(&mut self, target: &'static str, name: &str, mode: u8, body: &[u8]) {
        let mut bytes = vec![mode];
        bytes.extend_from_slice(body);
        self.0.entry(target).or_default().push((name.to_owned(), bytes));
    }

    fn add_raw(&mut self, target: &'static str, name: &str, body: &[u8]) {
        self.0.entry(target).or_default().push((name.to_owned(), body.to_vec()));
    }
}

const SPEC_JSON: &str = r#"{"service":{"command":["bin/app","--port","8080"],"user":"app","group":"app",
 "working_directory":"var/data","environment":{"PORT":"8080","GREETING":"hello $USER 100%"},
 "restart":"always","stop_timeout":"10s"},
 "resources":{"memory_max":"512M","cpu_quota_percent":150,"tasks_max":64},
 "sandbox":{"level":"basic","read_write_paths":["/var/lib/app"],
   "bind_paths":["/srv/data:/data"],"bind_read_only_paths":["/etc/ssl"],"allow_setuid":false},
 "config_files":[{"path":"etc/app.conf","content":"listen = 8080\n","mode":"0640"}],
 "health":{"grace_period":"20s","interval":"1s","successes":3,"checks":[
   {"kind":"http","url":"http://127.0.0.1:8080/healthz","status":204,"timeout":"2s"},
   {"kind":"tcp","address":"127.0.0.1:8080"},
   {"kind":"command","command":["bin/check","--quick"],"timeout":"5s"}]},
 "hooks":{"pre_start":{"command":["bin/migrate"],"timeout":"2m"},"post_start":{"command":["bin/warm"]}},
 "keep_releases":5}"#;

fn spec() -> AppSpec {
    serde_json::from_str(SPEC_JSON).expect("the seed spec parses")
}

fn manifest(serial: u64, hold: bool) -> Manifest {
    let tarball_digest = Digest::of(b"release 1.4.2");
    let image_digest = Digest::of(b"image manifest");
    let mut apps = BTreeMap::new();
    apps.insert(
        "web".parse().expect("app name"),
        AppRelease {
            version: "1.4.2".parse().expect("version"),
            artifact: Artifact::Tarball {
                url: HttpUrl::try_from(format!(
                    "https://coordinator.example:8443/v1/artifacts/{tarball_digest}"
                ))
                .expect("url"),
                digest: tarball_digest,
                size: 10_485_760,
            },
            spec: spec(),
        },
    );
    apps.insert(
        "cache".parse().expect("app name"),
        AppRelease {
            version: "7.2.0".parse().expect("version"),
            artifact: Artifact::Oci {
                reference: OciReference::try_from(format!("registry.example:5000/cache@{image_digest}"))
                    .expect("reference"),
                digest: image_digest,
            },
            spec: serde_json::from_str(r#"{"service":{}}"#).expect("image spec"),
        },
    );
    Manifest {
        schema: MANIFEST_SCHEMA,
        host: fixture().host.clone(),
        serial,
        issued_at: now(),
        expires_at: now().plus(Duration::from_secs(86_400)),
        hold,
        apps,
    }
}

fn manifests(fixture: &Fixture, seeds: &mut Seeds) {
    let key = &fixture.manifest_keys[0];
    seeds.add("manifest_accept", "signed", 0, &manifest(7, false).sign(&[key]));
    seeds.add(
        "manifest_accept",
        "signed-after-last",
        2,
        &manifest(9, true).sign(&[key]),
    );
    seeds.add(
        "manifest_accept",
        "signed-two-keys",
        0,
        &manifest(8, false).sign(&[key, &fixture.manifest_keys[1]]),
    );
    seeds.add(
        "manifest_accept",
        "signed-by-root",
        0,
        &manifest(7, false).sign(&[&fixture.roots[0]]),
    );
    seeds.add("manifest_accept", "trust-as-manifest", 0, &fixture.trust_envelope);
    seeds.add("manifest_accept", "payload", 1, &manifest(7, false).to_payload());
    seeds.add(
        "manifest_accept",
        "payload-after-last",
        3,
        &manifest(6, true).to_payload(),
    );
    let mut empty = manifest(1, false);
    empty.apps.clear();
    seeds.add("manifest_accept", "payload-no-apps", 1, &empty.to_payload());
}

fn trust(fixture: &Fixture, seeds: &mut Seeds) {
    let [root_a, root_b] = [&fixture.roots[0], &fixture.roots[1]];
    let [manifest_a, manifest_b] = [&fixture.manifest_keys[0], &fixture.manifest_keys[1]];
    let [spare_a, spare_b] = [&fixture.spare_keys[0], &fixture.spare_keys[1]];
    // Version 2 moves the roots to the spare keys; version 3 swaps the manifest key.
    let v2 = fixture.document_with(2, &[spare_a, spare_b], &[manifest_a]);
    let v3 = fixture.document_with(3, &[spare_a], &[manifest_b]);
    let v2_signed = v2.sign(&[root_a, spare_a]);
    let v3_signed = v3.sign(&[spare_a]);
    seeds.add("trust_rotation", "rotate-one", 0, &v2_signed);
    seeds.add("trust_rotation", "rotate-chain", 0, &join(&[&v2_signed, &v3_signed]));
    seeds.add("trust_rotation", "rotate-unsigned-by-new", 0, &v2.sign(&[root_a]));
    seeds.add("trust_rotation", "rotate-same-version", 0, &fixture.trust_envelope);
    seeds.add(
        "trust_rotation",
        "bootstrap-then-rotate",
        2,
        &join(&[&fixture.trust_envelope, &v2_signed]),
    );
    seeds.add("trust_rotation", "bootstrap", 2, &fixture.trust_envelope);
    seeds.add(
        "trust_rotation",
        "payloads",
        1,
        &join(&[&v2.to_payload(), &v3.to_payload()]),
    );
    let shared = fixture.document_with(2, &[root_b, manifest_a], &[manifest_a]);
    seeds.add("trust_rotation", "payload-shared-key", 1, &shared.to_payload());
    seeds.add(
        "trust_rotation",
        "bootstrap-payloads",
        3,
        &join(&[&fixture.document.to_payload(), &v2.to_payload()]),
    );
}

/// A tar archive written header by header, names and link targets taken as raw bytes so
/// that seeds can hold exactly what an attacker would write.
struct Tar(Vec<u8>);

impl Tar {
    fn new() -> Tar {
        Tar(Vec::new())
    }

    fn entry(mut self, kind: EntryType, path: &[u8], mode: u32, link: &[u8], data: &[u8]) -> Tar {
        let mut header = Header::new_gnu();
        {
            let old = header.as_old_mut();
            old.name[..path.len()].copy_from_slice(path);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        self.0.extend_from_slice(header.as_bytes());
        self.0.extend_from_slice(data);
        let padding = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0, padding));
        self
    }

    fn dir(self, path: &str, mode: u32) -> Tar {
        self.entry(EntryType::Directory, path.as_bytes(), mode, b"", b"")
    }

    fn file(self, path: &str, mode: u32, data: &[u8]) -> Tar {
        self.entry(EntryType::Regular, path.as_bytes(), mode, b"", data)
    }

    fn symlink(self, path: &str, target: &str) -> Tar {
        self.entry(EntryType::Symlink, path.as_bytes(), 0o777, target.as_bytes(), b"")
    }

    fn hardlink(self, path: &str, target: &str) -> Tar {
        self.entry(EntryType::Link, path.as_bytes(), 0o644, target.as_bytes(), b"")
    }

    /// An entry whose name comes from a pax `path` record.
    fn pax_file(self, path: &str, data: &[u8]) -> Tar {
        let record_body = format!(" path={path}\n");
        let mut length = record_body.len() + 1;
        while format!("{length}{record_body}").len() != length {
            length += 1;
        }
        let record = format!("{length}{record_body}");
        self.entry(EntryType::XHeader, b"PaxHeaders/x", 0o644, b"", record.as_bytes())
            .file("placeholder", 0o644, data)
    }

    /// An entry whose name needs a GNU long-name entry.
    fn long_file(self, path: &str, data: &[u8]) -> Tar {
        let mut name = path.as_bytes().to_vec();
        name.push(0);
        self.entry(EntryType::GNULongName, b"././@LongLink", 0o644, b"", &name)
            .file("placeholder", 0o644, data)
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

fn release_tree() -> Tar {
    Tar::new()
        .dir("./", 0o755)
        .dir("bin/", 0o755)
        .file("bin/app", 0o755, b"#!/bin/sh\nexec sleep 1000\n")
        .dir("etc/", 0o750)
        .file("etc/app.conf", 0o640, b"listen = 8080\n")
        .file("lib/deep/nested/data.bin", 0o644, &[7; 1500])
        .symlink("bin/current", "app")
        .symlink("lib/up", "../etc/app.conf")
        .hardlink("bin/app-again", "bin/app")
        .file("empty", 0o600, b"")
}

fn tarballs(seeds: &mut Seeds) {
    let target = "unpack";
    seeds.add(target, "release", 0, &release_tree().finish());
    seeds.add(target, "release-gz", 1, &gzip(&release_tree().finish()));
    seeds.add(
        target,
        "release-keep-setuid",
        2,
        &release_tree().file("bin/su", 0o4755, b"x").finish(),
    );
    seeds.add(
        target,
        "setuid-stripped",
        0,
        &Tar::new().file("bin/su", 0o6755, b"x").finish(),
    );
    seeds.add(
        target,
        "long-names",
        0,
        &Tar::new()
            .long_file(&format!("{}/file", "d".repeat(150)), b"long")
            .pax_file("pax/named/file.txt", b"pax")
            .finish(),
    );
    seeds.add(
        target,
        "parent",
        0,
        &Tar::new().file("../canary/evil", 0o644, b"x").finish(),
    );
    seeds.add(
        target,
        "absolute",
        0,
        &Tar::new().file("/tmp/evil", 0o644, b"x").finish(),
    );
    seeds.add(
        target,
        "symlink-then-through",
        0,
        &Tar::new()
            .symlink("escape", "../canary")
            .file("escape/evil", 0o644, b"x")
            .finish(),
    );
    seeds.add(
        target,
        "symlink-absolute",
        0,
        &Tar::new().symlink("etc", "/etc").finish(),
    );
    seeds.add(
        target,
        "symlink-chain",
        0,
        &Tar::new()
            .dir("a/b/", 0o755)
            .symlink("a/b/up", "..")
            .symlink("a/b/upup", "up/..")
            .symlink("a/out", "b/upup/..")
            .finish(),
    );
    seeds.add(
        target,
        "dir-then-symlink",
        0,
        &Tar::new()
            .dir("x/", 0o755)
            .symlink("x", "../canary")
            .file("x/evil", 0o644, b"x")
            .finish(),
    );
    seeds.add(
        target,
        "hardlink-outside",
        0,
        &Tar::new().hardlink("keep", "../canary/keep").finish(),
    );
    seeds.add(
        target,
        "hardlink-to-symlink",
        0,
        &Tar::new()
            .symlink("s", "file")
            .file("file", 0o644, b"f")
            .hardlink("h", "s")
            .finish(),
    );
    seeds.add(
        target,
        "fifo",
        0,
        &Tar::new().entry(EntryType::Fifo, b"pipe", 0o644, b"", b"").finish(),
    );
    seeds.add(
        target,
        "read-only-dir",
        0,
        &Tar::new().dir("ro/", 0o555).file("ro/file", 0o444, b"r").finish(),
    );
    seeds.add(target, "truncated", 0, &release_tree().finish()[..1500]);
}

fn layers(seeds: &mut Seeds) {
    let target = "oci_layer";
    let base = Tar::new()
        .dir("./", 0o755)
        .dir("etc/", 0o755)
        .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/hostname", 0o644, b"image\n")
        .dir("usr/bin/", 0o755)
        .file("usr/bin/app", 0o755, b"#!/bin/sh\n")
        .hardlink("usr/bin/app2", "usr/bin/app")
        .symlink("bin", "usr/bin")
        .symlink("usr/bin/sh", "/bin/busybox")
        .dir("var/cache/", 0o755)
        .file("var/cache/a", 0o644, b"a")
        .file("var/cache/b", 0o644, b"b")
        .dir("tmp/", 0o1777)
        .finish();
    let upper = Tar::new()
        .file("etc/.wh.hostname", 0o644, b"")
        .file("var/cache/.wh..wh..opq", 0o644, b"")
        .file("var/cache/c", 0o644, b"c")
        .dir("usr/bin/app", 0o755)
        .file(
            "etc/passwd",
            0o600,
            b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .finish();
    seeds.add(target, "base", 0, &base);
    seeds.add(target, "base-upper", 0, &join(&[&base, &upper]));
    seeds.add(target, "base-upper-keep-bits", 2, &join(&[&base, &upper]));
    let escape_lower = Tar::new().symlink("etc", "../canary").symlink("root", "/").finish();
    let escape_upper = Tar::new()
        .file("etc/evil", 0o644, b"x")
        .file("root/tmp/evil", 0o644, b"x")
        .finish();
    seeds.add(
        target,
        "through-lower-symlink",
        0,
        &join(&[&escape_lower, &escape_upper]),
    );
    seeds.add(
        target,
        "whiteout-through-symlink",
        0,
        &join(&[&escape_lower, &Tar::new().file("etc/.wh.keep", 0o644, b"").finish()]),
    );
    seeds.add(
        target,
        "opaque-through-symlink",
        0,
        &join(&[&escape_lower, &Tar::new().file("etc/.wh..wh..opq", 0o644, b"").finish()]),
    );
    seeds.add(
        target,
        "hardlink-outside",
        0,
        &Tar::new()
            .hardlink("keep", "../canary/keep")
            .hardlink("abs", "/etc/passwd")
            .finish(),
    );
    seeds.add(
        target,
        "device",
        0,
        &Tar::new().entry(EntryType::Char, b"dev/null", 0o666, b"", b"").finish(),
    );
    seeds.add(
        target,
        "replace-dir-with-symlink",
        0,
        &join(&[
            &Tar::new().dir("data/", 0o755).file("data/x", 0o644, b"x").finish(),
            &Tar::new().symlink("data", "../canary").finish(),
            &Tar::new().file("data/y", 0o644, b"y").finish(),
        ]),
    );
}

fn specs(seeds: &mut Seeds) {
    let target = "app_spec";
    seeds.add(target, "full-json", 0, SPEC_JSON.as_bytes());
    seeds.add(target, "image-json", 0, br#"{"service":{}}"#);
    let sample = include_str!("../../../packaging/sample-app.toml");
    seeds.add(target, "sample-app-toml", 1, sample.as_bytes());
    let full_toml = r#"keep_releases = 5

[service]
command = ["bin/app", "--port", "8080", "$HOME", "100%"]
user = "app"
group = "app"
working_directory = "var/data"
restart = "always"
stop_timeout = "10s"

[service.environment]
PORT = "8080"
GREETING = "hello \"world\"\n"

[resources]
memory_max = "512M"
cpu_quota_percent = 150
tasks_max = 64

[sandbox]
level = "strict"
read_write_paths = ["/var/lib/app"]
bind_paths = ["/srv/data:/data"]
bind_read_only_paths = ["/etc/ssl"]
allow_setuid = true

[[config_files]]
path = "etc/app.conf"
content = """
listen = 8080
"""
mode = "0640"

[health]
grace_period = "20s"
interval = "1s"
successes = 3

[[health.checks]]
kind = "tcp"
address = "127.0.0.1:8080"

[[health.checks]]
kind = "command"
command = ["bin/check"]
timeout = "5s"

[hooks.pre_start]
command = ["bin/migrate", "--yes"]
timeout = "2m"
"#;
    seeds.add(target, "full-toml", 1, full_toml.as_bytes());
}

fn reports(seeds: &mut Seeds) {
    let target = "host_report";
    seeds.add_raw(
        target,
        "minimal",
        br#"{"schema":1,"host":"web-01","sent_at":"2026-12-01T00:00:00Z",
 "facts":{"agent_version":"0.1.0","os":"debian 12","arch":"x86_64"}}"#,
    );
    seeds.add_raw(
        target,
        "full",
        br#"{"schema":1,"host":"web-01","sent_at":"2026-12-01T00:00:00Z","manifest_serial":7,"held":true,
 "manifest_rejection":"manifest rejected: serial 6 is not above 7",
 "facts":{"agent_version":"0.1.0","os":"debian 12","arch":"x86_64","future":1},
 "apps":{"web":{"current":"1.4.2","desired":"1.5.0","state":"installing","health":"http 200","last_error":null},
         "cache":{"current":null,"desired":"7.2.0","state":"failed","last_error":"unpack: too large","bad_versions":["7.1.0"]}},
 "events":[{"at":"2026-12-01T00:00:00Z","app":"web","message":"installed 1.4.2"},
           {"at":"2026-12-01T00:00:01Z","message":"trust rotated to version 2"}],
 "unknown":[1,2,3]}"#,
    );
}

fn configs(seeds: &mut Seeds) {
    let target = "agent_config";
    seeds.add_raw(target, "empty", b"");
    seeds.add_raw(
        target,
        "full",
        br#"coordinator = "https://deploy.example.com:8443"
host_id = "web-01"
state_dir = "/var/lib/drover"
poll_interval = "30s"
long_poll = "60s"
max_release_size = "2G"

[labels]
rack = "r12"

[registries."registry.example.com"]
username = "deploy"
password_file = "/etc/drover/registry.password"
ca_file = "/etc/drover/registry-ca.pem"

[registries."ghcr.example"]
token_file = "/etc/drover/ghcr.token"

[registries."127.0.0.1:5000"]
insecure = true
"#,
    );
    seeds.add_raw(
        target,
        "bad",
        br#"coordinator = "http://plain.example"
state_dir = "relative"
poll_interval = "0s"
long_poll = "1h"
max_release_size = "1K"
[registries."127.0.0.1:5000"]
insecure = true
username = "u"
password_file = "/p"
"#,
    );
}
