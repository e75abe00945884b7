//! The `orcwire` binary: the demo runs end to end, `--help` documents both
//! roles, and bad usage is refused.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orcwire"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("orcwire {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn demo_calls_both_ways_and_exits_zero() {
    for (wait, dispatch) in [("balanced", "inline"), ("block", "pool")] {
        let out = run(
            &[
                "demo",
                "--calls",
                "300",
                "--wait",
                wait,
                "--dispatch",
                dispatch,
            ],
            Duration::from_secs(120),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{wait}/{dispatch}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        for expected in [
            "echo of 0, 1, 7, 8, 9, 64, 4096 B: all correct",
            "64 MiB echo",
            "4 threads",
            "64 B ctl_echo round trip",
            "executor exited: exit status: 0",
            "every result checked; OK",
        ] {
            assert!(
                stdout.contains(expected),
                "missing {expected:?} in:\n{stdout}"
            );
        }
        assert!(stdout.contains("p99="), "no latency summary:\n{stdout}");
    }
}

#[test]
fn help_documents_both_roles() {
    let out = run(&["--help"], Duration::from_secs(10));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["demo", "executor", "--wait", "--connect", "--dispatch"] {
        assert!(text.contains(word), "--help does not mention {word}");
    }
}

#[test]
fn bad_usage_is_refused_with_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["--wait", "sometimes"],
        &["--ring", "1000"],
        &["demo", "--calls"],
    ] {
        let out = run(args, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn an_executor_started_by_hand_explains_what_is_missing() {
    let out = Command::new(env!("CARGO_BIN_EXE_orcwire"))
        .arg("executor")
        .env_remove("ORCWIRE_SHM_FDS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ORCWIRE_SHM_FDS"), "{err}");
}
