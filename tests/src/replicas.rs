//! Several `drover serve` processes on one PostgreSQL (issue 16), for the tests of the
//! replicated mode: a [`PostgresCluster`] of the test's own, and replicas that share the
//! CA, the keys and the admin token (the first replica makes them; the others get copies
//! of those files, as an operator's configuration management would give them) and
//! nothing else: each has its own data directory, port and server certificate.
//!
//! Replicas are child processes on fixed ports (127.0.0.1 unless started with
//! [`Replicas::start_on`], e.g. on a [`crate::net::Bridge`]'s address for real hosts), so a
//! replica killed with -9 and started again keeps its URL (agents list replicas by URL).
//! Every wait is bounded.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_coordinator::testing::PostgresCluster;

use crate::binary;
use crate::fleet::Admin;

/// How long a replica may take to listen (it migrates and loads the fleet first).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The files of a data directory that every replica must share: the CA that signs every
/// replica's server certificate and every host's, the admin token, and the key directory
/// (manifest key and trust document).
pub const SHARED_FILES: &[&str] = &["ca.pem", "ca.key", "admin.token", "keys"];

/// One `drover serve` process.
#[derive(Debug)]
pub struct Replica {
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The address it listens on (a name in its server certificate).
    pub ip: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// Its log (stdout and stderr, appended across restarts).
    pub log: PathBuf,
    /// More arguments for `drover serve` (e.g. `--artifact-registry`).
    pub args: Vec<String>,
    child: Option<Child>,
}

impl Replica {
    /// Its base URL.
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.ip, self.port)
    }

    /// An admin client for it (the shared admin token, the shared CA).
    pub fn admin(&self) -> Admin {
        Admin::from_data_dir(&self.data_dir, &self.url())
    }

    /// Whether its process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_none())
    }

    /// kill -9, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts `drover serve` and waits until it listens.
    pub fn start(&mut self, database: &str) {
        assert!(self.child.is_none(), "replica on port {} is running already", self.port);
        let address_file = self.data_dir.join("address");
        let _ = fs::remove_file(&address_file);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("replica log");
        let child = Command::new(binary("drover"))
            .args(["serve", "--listen", &format!("{}:{}", self.ip, self.port)])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--database", database])
            .args(&self.args)
            .env("DROVER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("replica log"))
            .stderr(log)
            .spawn()
            .expect("spawn drover serve");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // Written atomically once the server listens.
            if fs::read_to_string(&address_file).is_ok_and(|address| !address.trim().is_empty()) {
                return;
            }
            let exited = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                self.kill();
                panic!(
                    "replica on port {} did not start ({exited:?}); its log:\n{}",
                    self.port,
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL cluster and the replicas serving one database on it.
#[derive(Debug)]
pub struct Replicas {
    /// The replicas, in the order they were started.
    pub replicas: Vec<Replica>,
    /// The database URL every replica uses.
    pub database: String,
    /// The PostgreSQL server (declared after the replicas: dropped after them).
    pub postgres: PostgresCluster,
    scratch: tempfile::TempDir,
}

impl Replicas {
    /// Starts PostgreSQL and `count` replicas: the first makes the shared credentials,
    /// the others start with copies of them.
    pub fn start(count: usize) -> Replicas {
        Replicas::start_on(count, Ipv4Addr::LOCALHOST)
    }

    /// [`Replicas::start`] with every replica listening on `listen_ip`: real hosts on a
    /// [`crate::net::Bridge`] reach the machine at the bridge's gateway, not 127.0.0.1.
    pub fn start_on(count: usize, listen_ip: Ipv4Addr) -> Replicas {
        Replicas::start_with(count, listen_ip, &[])
    }

    /// [`Replicas::start_on`] with `args` added to every replica's `drover serve`.
    pub fn start_with(count: usize, listen_ip: Ipv4Addr, args: &[&str]) -> Replicas {
        assert!(count >= 1);
        let postgres = PostgresCluster::start();
        let database = postgres.create_database("drover");
        let scratch = tempfile::tempdir().expect("scratch directory");
        let mut replicas = Vec::with_capacity(count);
        for index in 0..count {
            let data_dir = scratch.path().join(format!("replica-{index}"));
            if index > 0 {
                let first: &Replica = &replicas[0];
                copy_shared_files(&first.data_dir, &data_dir);
            }
            let mut replica = Replica {
                data_dir,
                ip: listen_ip,
                port: free_port(),
                log: scratch.path().join(format!("replica-{index}.log")),
                args: args.iter().map(ToString::to_string).collect(),
                child: None,
            };
            replica.start(&database);
            replicas.push(replica);
        }
        Replicas {
            replicas,
            database,
            postgres,
            scratch,
        }
    }

    /// Every replica's URL, in order.
    pub fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(Replica::url).collect()
    }

    /// The scratch directory (logs, data directories).
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// Starts replica `index` again (after a kill) on its port and data directory.
    pub fn restart(&mut self, index: usize) {
        let database = self.database.clone();
        self.replicas[index].kill();
        self.replicas[index].start(&database);
    }

    /// Every replica's log, for a failed assertion's message.
    pub fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|replica| {
                format!(
                    "--- replica on port {} ---\n{}",
                    replica.port,
                    fs::read_to_string(&replica.log).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Copies [`SHARED_FILES`] from one data directory to a new one, keeping modes (the
/// private files are 0600 and a replica refuses looser ones).
pub fn copy_shared_files(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create the data directory");
    set_mode(to, 0o700);
    for name in SHARED_FILES {
        copy_keeping_modes(&from.join(name), &to.join(name));
    }
}

fn copy_keeping_modes(from: &Path, to: &Path) {
    let meta = fs::metadata(from).unwrap_or_else(|error| panic!("{}: {error}", from.display()));
    if meta.is_dir() {
        fs::create_dir_all(to).expect("create directory");
        for entry in fs::read_dir(from).expect("read directory") {
            let entry = entry.expect("directory entry");
            copy_keeping_modes(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        fs::copy(from, to).unwrap_or_else(|error| panic!("copy {}: {error}", from.display()));
    }
    set_mode(
        to,
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
    );
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).expect("chmod");
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind 127.0.0.1:0")
}
