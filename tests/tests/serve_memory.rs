//! What `drover serve` does about its own memory (issue 16: memory per held long-poll).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_tests::binary;

/// The coordinator turns transparent huge pages off for itself: its allocator asks for
/// them, and with them each of 2,000 held long-polls cost ~34 KiB of RSS instead of
/// ~27 KiB (a 2 MiB page is resident whole once one byte of it is touched). The kernel
/// says so in /proc/PID/status ("THP_enabled: 0", Linux 5.0 and later).
#[test]
fn drover_serve_runs_without_transparent_huge_pages() {
    let data_dir = tempfile::tempdir().expect("scratch data directory");
    let mut child = Command::new(binary("drover"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .env("DROVER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting drover serve");
    let status_path = format!("/proc/{}/status", child.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    let verdict = loop {
        if let Ok(Some(exit)) = child.try_wait() {
            break Err(format!("drover serve exited ({exit}) before it could be checked"));
        }
        let status = std::fs::read_to_string(&status_path).unwrap_or_default();
        match status.lines().find_map(|line| line.strip_prefix("THP_enabled:")) {
            // The flag is set by the first lines of main(): "1" only until then.
            Some(thp) if thp.trim() == "0" => break Ok(()),
            Some(thp) => last = Some(thp.trim().to_owned()),
            // A kernel before 5.0 does not say; nothing to check there.
            None if !status.is_empty() => break Ok(()),
            None => {}
        }
        if Instant::now() >= deadline {
            break Err(format!("THP_enabled stayed {last:?} for 30 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    verdict.expect("drover serve turned transparent huge pages off");
}
