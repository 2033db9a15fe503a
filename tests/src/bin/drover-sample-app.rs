//! drover-sample-app: the tiny HTTP service that end-to-end tests and the demo deploy.
//!
//! `GET /` answers `drover-sample-app VERSION`, `GET /healthz` answers `ok`. A release spec
//! makes a bad release by setting `FAIL` (or `--fail`): `health` (/healthz answers 500),
//! `crash` (exits 1 at start) or `hang` (never listens). Std only, so the binary can be
//! copied into any release artifact; SIGTERM's default action ends it at once.
//!
//! Settings, flag before environment: `--listen ADDR` / `LISTEN` / `PORT` (127.0.0.1:PORT)
//! (default `127.0.0.1:8080`); `--version-text TEXT` / `APP_VERSION` / a `VERSION` file in
//! the working directory (default `unknown`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// Largest request head read; longer ones get 431 so a client cannot grow our memory.
const MAX_HEAD: usize = 8192;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut version, mut fail) = (None, None, None);
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--listen" => &mut listen,
            "--version-text" => &mut version,
            "--fail" => &mut fail,
            other => exit_usage(&format!("unknown argument {other:?}")),
        };
        *slot = Some(
            args.next()
                .unwrap_or_else(|| exit_usage(&format!("{flag} needs a value"))),
        );
    }
    let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let listen = listen
        .or_else(|| env("LISTEN"))
        .or_else(|| env("PORT").map(|port| format!("127.0.0.1:{port}")))
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let version = version
        .or_else(|| env("APP_VERSION"))
        .or_else(|| {
            std::fs::read_to_string("VERSION")
                .ok()
                .map(|text| text.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let fail = fail.or_else(|| env("FAIL")).unwrap_or_default();

    match fail.as_str() {
        "" | "none" | "health" => {}
        "crash" => {
            eprintln!("drover-sample-app {version}: FAIL=crash, exiting");
            std::process::exit(1);
        }
        "hang" => {
            eprintln!("drover-sample-app {version}: FAIL=hang, never listening");
            loop {
                std::thread::park();
            }
        }
        other => exit_usage(&format!("unknown failure mode {other:?} (health, crash or hang)")),
    }

    let listener = TcpListener::bind(&listen).unwrap_or_else(|error| {
        eprintln!("drover-sample-app: cannot listen on {listen}: {error}");
        std::process::exit(1);
    });
    println!("drover-sample-app {version} listening on {listen}");
    let healthy = fail != "health";
    let version: &'static str = Box::leak(version.into_boxed_str());
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve(stream, version, healthy));
    }
}

fn exit_usage(message: &str) -> ! {
    eprintln!("drover-sample-app: {message}");
    eprintln!("usage: drover-sample-app [--listen ADDR] [--version-text TEXT] [--fail health|crash|hang]");
    std::process::exit(2);
}

/// Answers one request and closes the connection; malformed input gets a 4xx, never a panic.
fn serve(stream: TcpStream, version: &str, healthy: bool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let Ok(reader) = stream.try_clone() else { return };
    let mut reader = BufReader::new(reader).take(MAX_HEAD as u64);
    let mut request_line = Vec::new();
    let (status, body) = match reader.read_until(b'\n', &mut request_line) {
        Ok(0) | Err(_) => return,
        Ok(_) => {
            // Headers are read and ignored; the head must still end within the limit.
            let mut line = Vec::new();
            let complete = request_line.ends_with(b"\n")
                && loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(1..) if line == b"\r\n" || line == b"\n" => break true,
                        Ok(1..) => {}
                        _ => break false,
                    }
                };
            if complete {
                route(&String::from_utf8_lossy(&request_line), version, healthy)
            } else if reader.limit() == 0 {
                ("431 Request Header Fields Too Large", String::new())
            } else {
                ("400 Bad Request", String::new())
            }
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = stream;
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

fn route(request_line: &str, version: &str, healthy: bool) -> (&'static str, String) {
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(protocol), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", String::new());
    };
    if !protocol.starts_with("HTTP/1.") {
        return ("505 HTTP Version Not Supported", String::new());
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/") => ("200 OK", format!("drover-sample-app {version}\n")),
        ("GET", "/healthz") if healthy => ("200 OK", "ok\n".to_owned()),
        ("GET", "/healthz") => (
            "500 Internal Server Error",
            "failing on purpose (FAIL=health)\n".to_owned(),
        ),
        ("GET", _) => ("404 Not Found", "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", String::new()),
    }
}
