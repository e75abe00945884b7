//! `orcwire inspect PID` against a live `orcwire demo` and its executor,
//! and its refusals: a process without segments, no such process, another
//! user's process.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::run;
use orcwire_shm::layout::LAYOUT_VERSION;

const EXE: &str = env!("CARGO_BIN_EXE_orcwire");

/// A child that is killed and reaped if the test fails before it exits.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The two pids in the demo's "holding the connection idle" line.
fn pids_of(line: &str) -> (u32, u32) {
    let number_after = |key: &str| -> u32 {
        let rest = &line[line
            .find(key)
            .unwrap_or_else(|| panic!("{key} in {line:?}"))
            + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no pid after {key} in {line:?}"))
    };
    (
        number_after("controller pid "),
        number_after("executor pid "),
    )
}

#[test]
fn inspect_shows_the_live_demo_connection_from_both_sides() {
    let mut demo = Command::new(EXE)
        .args([
            "demo",
            "--calls",
            "50",
            "--ring",
            "65536",
            "--hold-ms",
            "60000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin: ChildStdin = demo.stdin.take().unwrap();
    let stdout = demo.stdout.take().unwrap();
    let mut demo = Reaped(Some(demo));
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::new();
    let holding = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("holding the connection idle") => break line,
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(e) => panic!("the demo never held its connection ({e}):\n{seen}"),
        }
    };
    let (controller, executor) = pids_of(&holding);

    for pid in [controller, executor] {
        let out = run(&["inspect", &pid.to_string()], Duration::from_secs(30));
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "inspect {pid}: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        for expected in [
            format!("pid {pid} fd "),
            "/memfd:orcwire".to_string(),
            format!("layout version {LAYOUT_VERSION}"),
            "ring 0     controller -> executor: capacity 65536 B".to_string(),
            "ring 1     executor -> controller: capacity 65536 B".to_string(),
            format!("controller pid {controller} (alive)"),
            format!("executor   pid {executor} (alive)"),
            "state      0x".to_string(),
            "epoch ".to_string(),
        ] {
            assert!(
                text.contains(&expected),
                "inspect {pid}: no {expected:?} in\n{text}"
            );
        }
        // One connection, idle: both rings empty.
        assert_eq!(text.matches("0 B in flight").count(), 2, "{text}");
        assert_eq!(text.matches("layout version").count(), 1, "{text}");
    }

    // End the hold; the demo disconnects and checks its executor's exit.
    let mut stdin = stdin;
    stdin.write_all(b"\n").unwrap();
    drop(stdin);
    let mut rest = String::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        rest.push_str(&line);
        rest.push('\n');
    }
    let mut child = demo.0.take().unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the demo did not exit after its hold:\n{rest}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    reader.join().unwrap();
    assert!(status.success(), "{status}\n{rest}");
    assert!(rest.contains("every result checked; OK"), "{rest}");
}

#[test]
fn a_process_without_segments_and_a_missing_process_exit_1() {
    // This test process holds no segment.
    let out = run(
        &["inspect", &std::process::id().to_string()],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no orcwire segment"), "{err}");

    // A pid above the kernel's limit (2^22) never names a process.
    let out = run(&["inspect", "4194305"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no process 4194305"), "{err}");
}

#[test]
fn another_users_process_is_refused() {
    // SAFETY: geteuid has no preconditions.
    let us = unsafe { libc::geteuid() };
    let (pid, owner, _guard) = if us == 0 {
        // As root: a process of uid 65534 (nobody) to look at.
        let child = Command::new("sleep")
            .arg("30")
            .uid(65534)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        (child.id(), 65534, Reaped(Some(child)))
    } else {
        // Otherwise: init, which is root's.
        (1, 0, Reaped(None))
    };
    let out = run(&["inspect", &pid.to_string()], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("process {pid} belongs to uid {owner}")),
        "{err}"
    );
}
