//! Smoke tests of the real-systemd host harness (`drover_tests::hosts`): a host boots to
//! `running`, runs commands and transient units, takes files, reaches the machine's
//! loopback, and is torn down even when the test using it panics.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use drover_tests::hosts::{Host, HostOptions, RootMode};

fn boot(name: &str) -> Host {
    boot_with(name, &HostOptions::default())
}

fn boot_with(name: &str, options: &HostOptions) -> Host {
    match Host::boot(name, options) {
        Ok(host) => host,
        Err(error) => panic!("host {name} did not boot: {error:#}"),
    }
}

#[test]
fn host_boots_to_running_and_runs_commands() {
    let host = boot("smoke");

    let state = host.check(&["systemctl", "is-system-running"]).expect("system state");
    assert_eq!(state.trim(), "running");
    let hostname = host.check(&["hostname"]).expect("hostname");
    assert_eq!(hostname.trim(), host.name(), "the machine name is the host name");
    let os_release = host.check(&["cat", "/etc/os-release"]).expect("os-release");
    assert!(os_release.contains("bookworm"), "{os_release}");
    let failing = host.sh("echo to-stderr >&2; exit 3");
    assert_eq!(failing.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&failing.stderr).trim(), "to-stderr");
    let error = host.check(&["false"]).expect_err("false fails");
    assert!(error.to_string().contains("\"false\""), "{error}");

    // A file copied in is there, with its mode, both through /proc and from inside.
    let source = tempfile::NamedTempFile::new().expect("temporary file");
    std::fs::write(source.path(), b"#!/bin/sh\necho copied-in\n").expect("write source");
    host.copy_in(source.path(), "/opt/smoke/bin/hello", 0o750)
        .expect("copy in");
    assert_eq!(
        host.check(&["/opt/smoke/bin/hello"]).expect("run copied script"),
        "copied-in\n"
    );
    assert_eq!(
        host.check(&["stat", "-c", "%a %U", "/opt/smoke/bin/hello"])
            .expect("stat"),
        "750 root\n"
    );
    assert_eq!(
        host.read_file("/opt/smoke/bin/hello").expect("read back"),
        b"#!/bin/sh\necho copied-in\n"
    );
    host.write_file("/etc/drover/written", b"written\n", 0o600)
        .expect("write file");
    assert_eq!(host.check(&["cat", "/etc/drover/written"]).expect("cat"), "written\n");
    assert!(host.path("/var/lib/drover").is_dir(), "the rootfs has /var/lib/drover");

    // A transient unit runs under the host's systemd, and a crash of it is seen.
    host.check(&["systemd-run", "--unit=smoke", "sleep", "300"])
        .expect("systemd-run");
    host.wait_until(
        "smoke.service to be active",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || host.unit_state("smoke") == "active",
    )
    .expect("unit active");
    let main_pid = host.pid_of_unit("smoke").expect("smoke.service has a main PID");
    let comm = host
        .check(&["cat", &format!("/proc/{main_pid}/comm")])
        .expect("main PID comm");
    assert_eq!(comm.trim(), "sleep");
    host.kill9(main_pid).expect("kill -9");
    host.wait_until(
        "smoke.service to stop after SIGKILL",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || host.unit_state("smoke") != "active",
    )
    .expect("unit stopped");
    assert_eq!(host.pid_of_unit("smoke"), None);
    let journal = host.journal(Some("smoke.service"));
    assert!(
        journal.contains("smoke.service"),
        "journal of smoke.service:\n{journal}"
    );
    assert!(
        journal.contains("SIGKILL") || journal.contains("KILL"),
        "journal:\n{journal}"
    );
}

#[test]
fn two_hosts_boot_in_parallel_and_share_loopback() {
    // A one-line HTTP server in the test process on the machine's loopback; each host
    // asks for its own name, so the answers prove that both hosts reached it.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local address").port();
    let (paths_sender, paths) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let Ok(mut stream) = stream else { continue };
            let mut request_line = String::new();
            if BufReader::new(&stream).read_line(&mut request_line).is_err() {
                continue;
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
            let body = format!("hello {path}");
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = paths_sender.send(path);
        }
    });

    // The second host also gets the extra nspawn arguments end-to-end tests use.
    let shared = tempfile::tempdir().expect("temporary directory");
    std::fs::write(shared.path().join("greeting"), "bound in\n").expect("write greeting");
    let second_options = HostOptions::default()
        .bind_ro(shared.path(), "/mnt/shared")
        .arg("--tmpfs=/var/lib/drover:size=8M");
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| boot("parallel-a"));
        let second = scope.spawn(|| boot_with("parallel-b", &second_options));
        (
            first.join().expect("first host booted"),
            second.join().expect("second host booted"),
        )
    });
    assert_ne!(first.name(), second.name());
    assert_ne!(first.init_pid(), second.init_pid());
    assert_eq!(
        second.check(&["cat", "/mnt/shared/greeting"]).expect("bound file"),
        "bound in\n"
    );
    assert!(
        !second.sh("touch /mnt/shared/written").status.success(),
        "the bind is read-only"
    );
    assert_eq!(
        second
            .check(&["findmnt", "-no", "FSTYPE", "/var/lib/drover"])
            .expect("findmnt"),
        "tmpfs\n"
    );
    // Each host's root is its own: a write in one is not seen in the other.
    first.write_file("/etc/drover/only-here", b"a", 0o644).expect("write");
    assert!(!second.path("/etc/drover/only-here").exists());

    for host in [&first, &second] {
        let url = format!("http://127.0.0.1:{port}/{}", host.name());
        let body = host
            .check(&["curl", "-sS", "--max-time", "10", &url])
            .expect("curl from the host");
        assert_eq!(body, format!("hello /{}", host.name()));
    }
    let mut seen: Vec<String> = paths.iter().take(2).collect();
    seen.sort();
    let mut expected = vec![format!("/{}", first.name()), format!("/{}", second.name())];
    expected.sort();
    assert_eq!(seen, expected);
}

#[test]
fn host_is_torn_down_when_a_test_panics() {
    let (pids_sender, pids) = mpsc::channel::<(u32, u32)>();
    let outcome = std::panic::catch_unwind(move || {
        // The full-copy root mode, whose copy nspawn removes at the clean poweroff.
        let options = HostOptions {
            root: RootMode::EphemeralCopy,
            ..HostOptions::default()
        };
        let host = boot_with("panics", &options);
        pids_sender
            .send((host.nspawn_pid(), host.init_pid()))
            .expect("receiver alive");
        panic!("deliberate panic with host {} alive", host.name());
    });
    assert!(outcome.is_err(), "the closure panicked");
    let (nspawn_pid, init_pid) = pids.recv().expect("the host booted before the panic");
    for pid in [nspawn_pid, init_pid] {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} of the panicked test's host is still alive"
        );
    }
}
