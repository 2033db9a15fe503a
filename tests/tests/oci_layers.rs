//! The agent's OCI layer applier against the reference: a four-layer image built with
//! `umoci` (files, directories, owners, modes with setuid, absolute and relative symlinks,
//! hard links, a non-root user, whiteouts of a file and of a directory tree, a directory
//! replaced wholesale, a modified file, and an opaque directory with entries on both sides
//! of its marker) is unpacked by `umoci unpack` and by `drover_agent::oci::apply_layer`, and
//! the two root filesystems must be the same: paths, types, modes, owners, link targets,
//! content digests and hard-link groups ([`drover_tests::rootfs_tree`]). The whole agent
//! path, pulled from a real registry and staged as a release, is held against `umoci
//! unpack` in `oci_pull.rs`.
//!
//! Needs `umoci` (Debian package `umoci`) and root (owners are part of the comparison).
//! Without either it fails and says so; it does not skip.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use drover_agent::oci::{self, LayerLimits, LayerMeter};
use drover_agent::unpack::SpecialBits;
use drover_tests::rootfs_tree;

/// Runs `umoci` with `args`; fails the test if it is missing or fails.
fn umoci(args: &[&str]) {
    let output = Command::new("umoci").args(args).output().unwrap_or_else(|error| {
        panic!("cannot run umoci ({error}); this test needs it and does not skip: install the Debian package `umoci`")
    });
    assert!(
        output.status.success(),
        "umoci {}: {}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Fails unless the test runs as root: only root can give files the owners umoci and the
/// agent set, and the comparison includes owners.
fn require_root(scratch: &Path) {
    let probe = scratch.join("probe");
    fs::write(&probe, b"").expect("probe file");
    let uid = fs::metadata(&probe).expect("probe").uid();
    fs::remove_file(&probe).expect("remove probe");
    assert_eq!(
        uid, 0,
        "this test must run as root (it compares owners, which only root can set); it does not skip"
    );
}

fn write(path: &Path, content: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("parent directory");
    }
    fs::write(path, content).expect("write file");
    chmod(path, mode);
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("chown");
}

/// Unpacks the image's current state into a fresh bundle, lets `change` edit its rootfs,
/// and repacks it as one new layer.
fn umoci_layer(image: &str, bundle: &Path, change: impl FnOnce(&Path)) {
    let bundle_arg = bundle.to_str().expect("UTF-8 path");
    umoci(&["unpack", "--image", image, bundle_arg]);
    change(&bundle.join("rootfs"));
    umoci(&["repack", "--image", image, bundle_arg]);
    fs::remove_dir_all(bundle).expect("remove bundle");
}

/// A hand-made layer (umoci never writes opaque markers: it whites out each entry): an
/// opaque directory with this layer's entries before and after the marker, including a
/// directory the lower layers also have, a whiteout of a directory tree, `./` names, and
/// a file owned by the non-root user.
fn opaque_layer() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, entry_type: tar::EntryType, mode: u32, owner: u64, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(entry_type);
        header.set_mode(mode);
        header.set_uid(owner);
        header.set_gid(owner);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, path, data).expect("append entry");
    };
    use tar::EntryType::{Directory, Regular};
    add("./", Directory, 0o755, 0, b"");
    add("./opt/", Directory, 0o755, 0, b"");
    add("./opt/cache/", Directory, 0o775, 0, b"");
    add(
        "./opt/cache/fresh",
        Regular,
        0o640,
        1000,
        b"written before the marker\n",
    );
    add("./opt/cache/keep/", Directory, 0o755, 0, b"");
    add("./opt/cache/keep/new", Regular, 0o644, 0, b"new in a lower directory\n");
    add("./opt/cache/.wh..wh..opq", Regular, 0o600, 0, b"");
    add("./opt/cache/after", Regular, 0o644, 0, b"written after the marker\n");
    add("./usr/", Directory, 0o755, 0, b"");
    add("./usr/share/", Directory, 0o755, 0, b"");
    add("./usr/share/.wh.doc", Regular, 0o600, 0, b"");
    builder.into_inner().expect("finish tar")
}

/// Builds the test image in `layout` (tag `t`) and returns the image reference.
fn build_image(work: &Path) -> String {
    let layout = work.join("layout");
    let image = format!("{}:t", layout.to_str().expect("UTF-8 path"));
    let bundle = work.join("bundle");
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &image]);

    // Layer 1: the base.
    umoci_layer(&image, &bundle, |rootfs| {
        for directory in [
            "dev",
            "proc",
            "sys",
            "run",
            "var/tmp",
            "usr/lib",
            "usr/share/doc/pkg/examples",
        ] {
            fs::create_dir_all(rootfs.join(directory)).unwrap();
        }
        write(
            &rootfs.join("etc/passwd"),
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
            0o644,
        );
        write(&rootfs.join("etc/group"), b"root:x:0:\napp:x:1000:\n", 0o644);
        write(&rootfs.join("etc/shadow"), b"root:*:19000::::::\n", 0o600);
        write(&rootfs.join("etc/motd"), b"deleted by layer 2\n", 0o644);
        write(&rootfs.join("bin/tool"), b"#!/bin/sh\necho tool\n", 0o4755);
        fs::hard_link(rootfs.join("bin/tool"), rootfs.join("bin/tool-again")).unwrap();
        write(&rootfs.join("usr/lib/libx.so.1"), b"\x7fELF libx\n", 0o644);
        std::os::unix::fs::symlink("libx.so.1", rootfs.join("usr/lib/libx.so")).unwrap();
        std::os::unix::fs::symlink("/bin/tool", rootfs.join("usr/tool-absolute")).unwrap();
        std::os::unix::fs::symlink("../bin/tool", rootfs.join("usr/tool-relative")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/target", rootfs.join("usr/dangling")).unwrap();
        write(&rootfs.join("usr/share/doc/pkg/README"), b"docs\n", 0o644);
        write(&rootfs.join("usr/share/doc/pkg/examples/one"), b"example\n", 0o644);
        write(&rootfs.join("home/app/.profile"), b"export PATH=/bin\n", 0o644);
        write(&rootfs.join("home/app/secret"), b"app's secret\n", 0o600);
        chmod(&rootfs.join("home/app"), 0o750);
        for path in ["home/app", "home/app/.profile", "home/app/secret"] {
            chown(&rootfs.join(path), 1000, 1000);
        }
        write(&rootfs.join("srv/data/one"), b"1\n", 0o644);
        write(&rootfs.join("srv/data/sub/two"), b"2\n", 0o644);
        chmod(&rootfs.join("srv"), 0o750);
        write(&rootfs.join("opt/cache/a"), b"hidden by the opaque marker\n", 0o644);
        write(&rootfs.join("opt/cache/b/c"), b"hidden too\n", 0o644);
        write(
            &rootfs.join("opt/cache/keep/old"),
            b"hidden although keep/ stays\n",
            0o644,
        );
        write(&rootfs.join("opt/other"), b"not in the opaque directory\n", 0o644);
        fs::create_dir(rootfs.join("tmp")).unwrap();
        chmod(&rootfs.join("tmp"), 0o1777);
        fs::create_dir(rootfs.join("shared")).unwrap();
        chmod(&rootfs.join("shared"), 0o2775);
        chown(&rootfs.join("shared"), 0, 1000);
    });
    // Layer 2: a file deleted, a directory replaced wholesale (umoci writes a whiteout for
    // each old entry), a hard link removed.
    umoci_layer(&image, &bundle, |rootfs| {
        fs::remove_file(rootfs.join("etc/motd")).unwrap();
        fs::remove_dir_all(rootfs.join("srv/data")).unwrap();
        write(&rootfs.join("srv/data/three"), b"3\n", 0o644);
        write(&rootfs.join("srv/data/sub/four"), b"4\n", 0o600);
        fs::remove_file(rootfs.join("bin/tool-again")).unwrap();
    });
    // Layer 3: a file modified, an owner and a mode changed, a new hard link to a file of
    // layer 1.
    umoci_layer(&image, &bundle, |rootfs| {
        let passwd = rootfs.join("etc/passwd");
        let mut content = fs::read(&passwd).unwrap();
        content.extend_from_slice(b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
        fs::write(&passwd, content).unwrap();
        chown(&rootfs.join("srv/data/three"), 1000, 1000);
        chmod(&rootfs.join("etc/group"), 0o640);
        fs::hard_link(rootfs.join("usr/lib/libx.so.1"), rootfs.join("usr/lib/libx-again")).unwrap();
    });
    // Layer 4: the opaque directory, by hand.
    let layer = work.join("opaque.tar");
    fs::write(&layer, opaque_layer()).unwrap();
    umoci(&["raw", "add-layer", "--image", &image, layer.to_str().unwrap()]);
    image
}

/// The manifest's layers (media type, blob path) in order, each blob checked against its digest.
fn layers(layout: &Path, tag: &str) -> Vec<(String, PathBuf)> {
    let read_json = |path: &Path| -> serde_json::Value {
        serde_json::from_slice(&fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display())))
            .expect("JSON")
    };
    let blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let path = layout.join("blobs/sha256").join(hex);
        let actual = ring::digest::digest(&ring::digest::SHA256, &fs::read(&path).expect("blob"));
        let actual: String = actual.as_ref().iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(actual, hex, "blob {digest}");
        path
    };
    let index = read_json(&layout.join("index.json"));
    let descriptor = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|descriptor| descriptor["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("the tag in index.json");
    let manifest = read_json(&blob(descriptor["digest"].as_str().expect("digest")));
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|layer| {
            (
                layer["mediaType"].as_str().expect("media type").to_owned(),
                blob(layer["digest"].as_str().expect("digest")),
            )
        })
        .collect()
}

#[test]
fn oci_layers_match_umoci_unpack() {
    let work = tempfile::tempdir().expect("temporary directory");
    let work = work.path();
    require_root(work);
    let image = build_image(work);

    // umoci's rootfs, as root so owners are kept.
    let reference = work.join("reference");
    umoci(&["unpack", "--image", &image, reference.to_str().unwrap()]);
    let expected = reference.join("rootfs");

    // The agent's rootfs, layer by layer.
    let rootfs = work.join("agent-rootfs");
    fs::create_dir(&rootfs).unwrap();
    chmod(&rootfs, 0o755);
    let limits = LayerLimits {
        special_bits: SpecialBits::Keep,
        ..LayerLimits::default()
    };
    let mut meter = LayerMeter::new();
    let layers = layers(&work.join("layout"), "t");
    assert_eq!(layers.len(), 4, "{layers:?}");
    let mut whiteouts = 0;
    for (media_type, blob) in &layers {
        let stream = oci::decompressor(media_type, fs::File::open(blob).unwrap()).expect("a layer type we apply");
        let summary = oci::apply_layer(stream, &rootfs, &limits, &mut meter)
            .unwrap_or_else(|error| panic!("layer {}: {error}", blob.display()));
        whiteouts += summary.whiteouts;
    }
    assert_eq!(meter.layers(), 4);

    rootfs_tree::assert_same(&expected, &rootfs);

    // The image has what the comparison is meant to cover, so a match means something.
    let tree = rootfs_tree::scan(&rootfs);
    let node = |path: &str| {
        tree.nodes
            .get(Path::new(path))
            .unwrap_or_else(|| panic!("{path} missing"))
    };
    assert!(whiteouts >= 5, "whiteouts applied: {whiteouts}");
    assert_eq!(node("./bin/tool").mode, 0o4755);
    assert_eq!(node("./shared").mode, 0o2775);
    assert_eq!(node("./tmp").mode, 0o1777);
    assert_eq!(node("./home/app").mode, 0o750);
    assert_eq!(
        (node("./home/app/secret").uid, node("./home/app/secret").mode),
        (1000, 0o600)
    );
    assert_eq!(node("./srv/data/three").uid, 1000);
    assert_eq!(node("./opt/cache/fresh").uid, 1000);
    assert_eq!(
        node("./usr/tool-absolute").kind,
        rootfs_tree::Kind::Symlink {
            target: "/bin/tool".into()
        }
    );
    assert!(
        tree.hardlink_groups.contains(&vec![
            PathBuf::from("./usr/lib/libx-again"),
            PathBuf::from("./usr/lib/libx.so.1")
        ]),
        "{:?}",
        tree.hardlink_groups
    );
    for gone in [
        "./etc/motd",
        "./bin/tool-again",
        "./srv/data/one",
        "./srv/data/sub/two",
        "./usr/share/doc",
        "./opt/cache/a",
        "./opt/cache/b",
        "./opt/cache/keep/old",
    ] {
        assert!(!tree.nodes.contains_key(Path::new(gone)), "{gone} should be gone");
    }
    for kept in [
        "./opt/cache/fresh",
        "./opt/cache/after",
        "./opt/cache/keep/new",
        "./opt/other",
    ] {
        assert!(tree.nodes.contains_key(Path::new(kept)), "{kept} should be there");
    }
    assert!(
        !tree.nodes.keys().any(|path| path.to_string_lossy().contains(".wh.")),
        "no whiteout file in the rootfs"
    );

    // The comparison notices a difference in each property it compares.
    let mut changed = tree.clone();
    changed.nodes.get_mut(Path::new("./bin/tool")).unwrap().mode = 0o755;
    changed.nodes.get_mut(Path::new("./srv/data/three")).unwrap().uid = 0;
    changed.nodes.remove(Path::new("./opt/cache/after"));
    changed.hardlink_groups.clear();
    assert_eq!(rootfs_tree::differences(&tree, &changed).len(), 4);
    fs::write(rootfs.join("etc/passwd"), b"changed").unwrap();
    let problems = rootfs_tree::differences(&rootfs_tree::scan(&expected), &rootfs_tree::scan(&rootfs));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("./etc/passwd: file"), "{problems:?}");
}
