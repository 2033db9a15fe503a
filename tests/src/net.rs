//! Private networks for hosts that must not share the machine's network: a Linux bridge
//! made for one test, with the machine at `.1` and each host (booted with
//! `--network-bridge`) at an address of its own. Hosts on a bridge each have their own
//! loopback, so the same release (an app on a fixed port) can run on all of them, as on
//! a real fleet. Deleted on drop.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::hosts::{Host, HostOptions};

/// A bridge `drvt<pid>-<n>` with the machine at `10.78.<n>.1/24`.
#[derive(Debug)]
pub struct Bridge {
    name: String,
    subnet: u8,
}

impl Bridge {
    /// Creates a fresh bridge; the subnet is unique within this test process, the name
    /// unique on the machine (it carries the PID).
    pub fn create() -> anyhow::Result<Bridge> {
        static NEXT: AtomicU8 = AtomicU8::new(1);
        let subnet = NEXT.fetch_add(1, Ordering::Relaxed);
        // Interface names are at most 15 bytes.
        let name = format!("drvt{}-{subnet}", std::process::id() % 1_000_000);
        ip(&["link", "add", &name, "type", "bridge"])?;
        let bridge = Bridge { name, subnet };
        ip(&["addr", "add", &format!("{}/24", bridge.gateway()), "dev", &bridge.name])?;
        ip(&["link", "set", &bridge.name, "up"])?;
        Ok(bridge)
    }

    /// The machine's address on the bridge (where a coordinator for these hosts listens).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 78, self.subnet, 1)
    }

    /// The address of host number `n` (1-based).
    pub fn host_ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 78, self.subnet, 10 + n)
    }

    /// Boot options that put a host on this bridge (interface `host0` inside).
    pub fn host_options(&self) -> HostOptions {
        HostOptions::default().arg(format!("--network-bridge={}", self.name))
    }

    /// Gives a host booted with [`Bridge::host_options`] its address `host_ip(n)` and
    /// waits until it reaches `url` on the machine's side (any HTTP answer; TLS is not
    /// checked here).
    pub fn configure(&self, host: &Host, n: u8, url: &str) -> anyhow::Result<()> {
        let address = format!("{}/24", self.host_ip(n));
        host.check(&["ip", "addr", "add", &address, "dev", "host0"])?;
        host.check(&["ip", "link", "set", "host0", "up"])?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let output = host.exec(&["curl", "-sk", "-o", "/dev/null", "--max-time", "2", url]);
            if output.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "host {} does not reach {url} over {}: {}",
                    host.name(),
                    self.name,
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
