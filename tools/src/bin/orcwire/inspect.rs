//! `orcwire inspect PID`: the live connections of a running process,
//! read-only; see `orcwire_shm::inspect`.

use std::process::ExitCode;

use orcwire_shm::inspect::inspect_process;

use crate::common::InspectArgs;

pub fn run(args: &InspectArgs) -> ExitCode {
    let found = match inspect_process(args.pid) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("orcwire inspect: {e}");
            return ExitCode::from(1);
        }
    };
    for segment in &found {
        println!("{segment}");
    }
    let segments = found.iter().filter(|s| s.is_segment()).count();
    if segments == 0 {
        eprintln!(
            "orcwire inspect: process {} holds no orcwire segment open \
             (no /memfd:orcwire or /dev/shm/orcwire-* descriptor that decodes)",
            args.pid
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
