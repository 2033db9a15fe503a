//! Test fixtures that need a real server process: a PostgreSQL cluster of its own, started
//! from Debian's `postgresql` package (`/usr/lib/postgresql/<version>/bin`, or the
//! directory in `DROVER_POSTGRES_BIN`). Compiled for this crate's tests and, with the
//! `testing` feature, for drover-tests; never into the shipped binary.
//!
//! Each [`PostgresCluster`] is its own `initdb` in a fresh directory under the system temp
//! directory, run as `nobody` when the tests run as root (PostgreSQL refuses root), on a
//! free 127.0.0.1 port, with `trust` authentication for the `drover` superuser (nothing
//! but loopback can reach it). Dropping it stops the server and deletes the directory.

use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The unprivileged user (and group) the server runs as when the tests run as root.
const NOBODY: (u32, u32) = (65534, 65534);

/// How long a start may take before the fixture gives up (initdb alone takes ~1 s).
const START_BUDGET: Duration = Duration::from_secs(60);

/// The superuser the fixture creates; connections need no password.
pub const SUPERUSER: &str = "drover";

/// A running PostgreSQL server of its own, for one test.
#[derive(Debug)]
pub struct PostgresCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    server: Option<Child>,
}

impl PostgresCluster {
    /// Creates a cluster and starts its server. Panics with what to install when
    /// PostgreSQL is missing, and with the server's log when it does not start: a test
    /// that needs a database must not pass without one.
    pub fn start() -> PostgresCluster {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let bin = postgres_bin().unwrap_or_else(|| {
            panic!(
                "PostgreSQL is not installed: `apt-get install postgresql` (Debian 12), \
                 or set DROVER_POSTGRES_BIN to the directory holding initdb and postgres"
            )
        });
        let dir = std::env::temp_dir().join(format!(
            "drover-pg-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the cluster directory");
        if running_as_root() {
            chown(&dir, Some(NOBODY.0), Some(NOBODY.1)).expect("give the cluster directory to nobody");
        }
        let mut initdb = unprivileged(bin.join("initdb"));
        initdb
            .arg("--pgdata")
            .arg(dir.join("data"))
            .args(["--username", SUPERUSER, "--auth", "trust", "--encoding", "UTF8"])
            .args(["--locale", "C", "--no-sync", "--no-instructions"])
            .stdout(Stdio::null());
        let output = initdb.output().expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut cluster = PostgresCluster {
            bin,
            dir,
            port: 0,
            server: None,
        };
        cluster.port = free_port();
        cluster.run_server();
        cluster
    }

    /// The URL of database `name` on this cluster.
    pub fn url_of(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// The URL of the `postgres` database every cluster has.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let output = Command::new(self.bin.join("createdb"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--username",
                SUPERUSER,
                name,
            ])
            .output()
            .expect("run createdb");
        assert!(
            output.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.url_of(name)
    }

    /// Stops the server at once, as a crash would (SIGQUIT: immediate shutdown, recovery
    /// from the WAL at the next start), and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = Command::new("kill").args(["-QUIT", &server.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while server.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = server.kill();
                    let _ = server.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills the server (see [`PostgresCluster::kill`]) and starts it again on the same
    /// port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.run_server();
    }

    /// From now on takes TLS connections only, with this certificate (chain) and key
    /// (PEM): a plain connection is refused by `pg_hba.conf`. Restarts the server.
    pub fn require_tls(&mut self, cert_pem: &str, key_pem: &str) {
        let data = self.dir.join("data");
        for (file, text) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(file);
            std::fs::write(&path, text).expect("write the server's certificate or key");
            // PostgreSQL refuses a key others can read.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod 0600");
            if running_as_root() {
                chown(&path, Some(NOBODY.0), Some(NOBODY.1)).expect("give the file to nobody");
            }
        }
        let mut config = std::fs::read_to_string(data.join("postgresql.conf")).expect("read postgresql.conf");
        config.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(data.join("postgresql.conf"), config).expect("write postgresql.conf");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .expect("write pg_hba.conf");
        self.restart();
    }

    /// Starts the server and waits until it accepts connections.
    fn run_server(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).expect("create the server log");
        if running_as_root() {
            chown(self.dir.join("server.log"), Some(NOBODY.0), Some(NOBODY.1)).expect("chown the server log");
        }
        let mut postgres = unprivileged(self.bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            // Tests lose nothing to a process crash without fsync (the page cache keeps
            // it); only a machine crash would, and then the cluster is gone anyway.
            .args(["-c", "fsync=off", "-c", "max_connections=300"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        self.server = Some(postgres.spawn().expect("start postgres"));
        let started = Instant::now();
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--quiet"])
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return;
            }
            let exited = self.server.as_mut().and_then(|server| server.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > START_BUDGET {
                panic!(
                    "postgres did not start ({}): {}",
                    exited.map_or_else(|| "timed out".to_owned(), |status| status.to_string()),
                    std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A command that runs as `nobody` when the tests run as root.
fn unprivileged(program: PathBuf) -> Command {
    let mut command = Command::new(program);
    if running_as_root() {
        // std drops the supplementary groups when root sets a uid.
        command.uid(NOBODY.0).gid(NOBODY.1);
        // nobody's home does not exist; PostgreSQL's tools only need a readable cwd.
        command.current_dir("/");
    }
    command
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0)
        .unwrap_or(false)
}

/// `DROVER_POSTGRES_BIN`, or the newest `/usr/lib/postgresql/<version>/bin` with a server.
fn postgres_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DROVER_POSTGRES_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            Path::new(&bin.join("postgres")).exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A port nothing listens on right now (the kernel's choice for an ephemeral bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind 127.0.0.1:0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_takes_connections_survives_a_restart_and_is_removed_when_dropped() {
        let mut cluster = PostgresCluster::start();
        let url = cluster.create_database("fixture_check");
        assert!(url.ends_with("/fixture_check"), "{url}");
        let query = |cluster: &PostgresCluster| {
            Command::new(cluster.bin.join("psql"))
                .args(["--no-psqlrc", "--tuples-only", "--command", "SELECT 41 + 1", &url])
                .output()
                .expect("run psql")
        };
        assert_eq!(String::from_utf8_lossy(&query(&cluster).stdout).trim(), "42");
        cluster.restart();
        assert_eq!(String::from_utf8_lossy(&query(&cluster).stdout).trim(), "42");
        let dir = cluster.dir.clone();
        drop(cluster);
        assert!(!dir.exists(), "the cluster directory is removed");
    }
}
