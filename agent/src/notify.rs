//! systemd's readiness protocol (`sd_notify`) without libsystemd: one datagram per state
//! to the socket named by `NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace). `READY=1` once the agent is polling, `WATCHDOG=1` at half the unit's
//! `WatchdogSec=` while the poll loop is alive, `STOPPING=1` when draining. Outside
//! systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::os::unix::net::UnixDatagram;

/// A connection to systemd's notify socket, if the agent runs under one.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`; an unusable value disables notification (logged).
    pub fn from_env() -> Notifier {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { socket: None };
        };
        let address = {
            let text = name.to_string_lossy();
            match text.strip_prefix('@') {
                Some(abstract_name) => {
                    use std::os::linux::net::SocketAddrExt as _;
                    std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
                }
                None => std::os::unix::net::SocketAddr::from_pathname(text.as_ref()),
            }
        };
        match (UnixDatagram::unbound(), address) {
            (Ok(socket), Ok(address)) => Notifier {
                socket: Some((socket, address)),
            },
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!("NOTIFY_SOCKET {name:?} is unusable: {error}");
                Notifier { socket: None }
            }
        }
    }

    /// Sends one state line (e.g. `READY=1`).
    pub fn notify(&self, state: &str) {
        if let Some((socket, address)) = &self.socket
            && let Err(error) = socket.send_to_addr(state.as_bytes(), address)
        {
            tracing::warn!("telling systemd {state}: {error}");
        }
    }

    /// Half the watchdog interval systemd asked for, if it asked (`WATCHDOG_USEC`).
    pub fn watchdog_interval() -> Option<std::time::Duration> {
        let micros: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (micros > 0).then(|| std::time::Duration::from_micros(micros / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_a_listening_socket() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier {
            socket: Some((
                UnixDatagram::unbound().expect("socket"),
                std::os::unix::net::SocketAddr::from_pathname(&path).expect("address"),
            )),
        };
        notifier.notify("READY=1");
        let mut buffer = [0u8; 64];
        let count = listener.recv(&mut buffer).expect("receive");
        assert_eq!(&buffer[..count], b"READY=1");
    }
}
