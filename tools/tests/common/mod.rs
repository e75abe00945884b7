//! What the tool's tests share: running `orcwire` (or any command) to
//! completion under a time limit.
#![allow(dead_code)] // each test binary uses a part

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `orcwire ARGS` to completion within `limit`.
pub fn run(args: &[&str], limit: Duration) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orcwire"));
    cmd.args(args);
    run_command(cmd, limit)
}

/// Runs `cmd` to completion, killing it (and failing) after `limit`. Its
/// output is read on threads meanwhile, so a chatty child never blocks on
/// a full pipe.
pub fn run_command(mut cmd: Command, limit: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}
