//! Teardown without unwinding: when the process owning a fleet is killed with
//! SIGKILL (no `Drop` runs), the watchdog still kills every fleet process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn processes_die_with_a_sigkilled_owner() {
    let dir = std::env::temp_dir().join(format!("kmm-e2e-orphan-{}", std::process::id()));
    let mut owner = Command::new(env!("CARGO_BIN_EXE_e2e"))
        .arg("supervised-sleep")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the e2e binary");
    let mut line = String::new();
    BufReader::new(owner.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read the child pid");
    let pid: u32 = line.trim().parse().expect("a pid");
    assert!(alive(pid), "supervised sleep {pid} is not running");

    owner.kill().expect("SIGKILL the owner");
    owner.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "supervised process {pid} survived its owner's SIGKILL for 15s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_dir_all(dir);
}
