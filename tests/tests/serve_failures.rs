//! `drover serve` failing to start: the real binary, each failure exits 1 (a failure,
//! not a usage error: the command line was fine) with one line that names what failed
//! (the file, the address) and why.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_tests::binary;

/// What a `drover serve` that should not start did: its exit code and its stderr.
struct Failed {
    code: Option<i32>,
    stderr: String,
}

/// Runs `drover serve --listen LISTEN --data-dir DATA_DIR` and waits (at most 60 s) for
/// it to exit; one that starts serving instead is killed and fails the test.
fn serve_expecting_failure(listen: &str, data_dir: &Path) -> Failed {
    serve_expecting_failure_with(listen, data_dir, &[])
}

/// [`serve_expecting_failure`] with `extra` arguments.
fn serve_expecting_failure_with(listen: &str, data_dir: &Path, extra: &[&str]) -> Failed {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let stderr_path = scratch.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut child = Command::new(binary("drover"))
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env_remove("DROVER_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("starting drover serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for drover serve") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "drover serve did not exit within 60 s; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Failed {
        code: status.code(),
        stderr: std::fs::read_to_string(&stderr_path).expect("stderr"),
    }
}

/// The line `drover: ...` that `main` prints for the error (the rest is the log).
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|line| line.starts_with("drover: "))
        .unwrap_or_else(|| panic!("no `drover: ` error line in:\n{stderr}"))
}

/// A data directory (0700, as `drover serve` makes it) in a scratch directory.
fn data_dir(scratch: &tempfile::TempDir) -> std::path::PathBuf {
    use std::os::unix::fs::DirBuilderExt as _;
    let data = scratch.path().join("data");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&data)
        .expect("data directory");
    data
}

#[test]
fn a_database_path_that_is_a_directory_fails_the_start_with_exit_1_naming_the_file() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let data = data_dir(&scratch);
    let database = data.join("coordinator.db");
    std::fs::create_dir(&database).expect("a directory where the database goes");
    let failed = serve_expecting_failure("127.0.0.1:0", &data);
    let line = error_line(&failed.stderr);
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    assert!(line.contains(&database.display().to_string()), "names the file: {line}");
    assert!(line.contains("unable to open database file"), "says why: {line}");
    assert!(
        !data.join("address").exists(),
        "a coordinator that did not start announces no address"
    );
}

#[test]
fn a_corrupt_database_file_fails_the_start_with_exit_1_naming_the_file_and_the_cause() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let data = data_dir(&scratch);
    let database = data.join("coordinator.db");
    let garbage = "this is not a SQLite database, but a text file put in its place. ".repeat(64);
    std::fs::write(&database, &garbage).expect("a corrupt database");
    let failed = serve_expecting_failure("127.0.0.1:0", &data);
    let line = error_line(&failed.stderr);
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    assert!(line.contains(&database.display().to_string()), "names the file: {line}");
    assert!(line.contains("file is not a database"), "says why: {line}");
    assert_eq!(
        std::fs::read_to_string(&database).expect("database file"),
        garbage,
        "the file is left as it was"
    );
}

#[test]
fn a_listen_address_in_use_fails_the_start_with_exit_1_naming_the_address() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let data = data_dir(&scratch);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to take");
    let address = taken.local_addr().expect("its address").to_string();
    let failed = serve_expecting_failure(&address, &data);
    let line = error_line(&failed.stderr);
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    assert!(line.contains(&address), "names the address: {line}");
    assert!(line.contains("in use"), "says why: {line}");
    assert!(line.contains("--listen"), "says what to change: {line}");
    drop(taken);
}

#[test]
fn an_unreadable_ca_fails_the_start_with_exit_1_naming_its_files() {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let scratch = tempfile::tempdir().expect("scratch directory");
    let data = data_dir(&scratch);
    std::fs::write(data.join("ca.pem"), "not a certificate\n").expect("ca.pem");
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(data.join("ca.key"))
        .and_then(|mut file| file.write_all(b"not a key\n"))
        .expect("ca.key");
    let failed = serve_expecting_failure("127.0.0.1:0", &data);
    let line = error_line(&failed.stderr);
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    assert!(
        line.contains(&data.join("ca.pem").display().to_string()),
        "names the certificate: {line}"
    );
    assert!(
        line.contains(&data.join("ca.key").display().to_string()),
        "names the key: {line}"
    );
    assert!(
        !data.join("coordinator.db").exists(),
        "nothing is made after the failure"
    );
}

#[test]
fn an_unreachable_postgres_database_fails_the_start_with_exit_1_naming_it_without_its_password() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let data = data_dir(&scratch);
    // A port nothing listens on: bound by the kernel's choice, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let url = format!("postgres://drover:s3cret@127.0.0.1:{port}/fleet");
    let failed = serve_expecting_failure_with("127.0.0.1:0", &data, &["--database", &url]);
    let line = error_line(&failed.stderr);
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    assert!(
        line.contains(&format!(
            "opening the database postgres://drover:***@127.0.0.1:{port}/fleet"
        )),
        "{line}"
    );
    assert!(line.contains("Connection refused"), "says why: {line}");
    assert!(line.contains("check that PostgreSQL runs"), "{line}");
    assert!(!failed.stderr.contains("s3cret"), "{}", failed.stderr);
    assert!(!data.join("coordinator.db").exists(), "no SQLite file made instead");
}

#[test]
fn a_database_url_that_is_not_postgres_is_a_usage_error_naming_the_accepted_forms() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let data = data_dir(&scratch);
    let failed = serve_expecting_failure_with("127.0.0.1:0", &data, &["--database", "mysql://root:hunter2@db/fleet"]);
    assert_eq!(failed.code, Some(2), "{}", failed.stderr);
    assert!(
        failed.stderr.contains("postgres://") && failed.stderr.contains("postgresql://"),
        "{}",
        failed.stderr
    );
    assert!(!failed.stderr.contains("hunter2"), "{}", failed.stderr);
}
