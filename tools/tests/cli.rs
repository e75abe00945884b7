//! The `orcwire` binary: the demo runs end to end, `--help` documents every
//! subcommand, bad usage is refused, `bench` writes its JSON report and its
//! chart.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{run, run_command};

/// Runs the binary with `args` within `limit` and asserts that it exited
/// 0 (its stderr and stdout in the message); returns its output and its
/// stdout as text.
fn run_ok(args: &[&str], limit: Duration) -> (std::process::Output, String) {
    let out = run(args, limit);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out, stdout)
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
fn help_documents_every_subcommand_and_option() {
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["--help"],
            &[
                "demo",
                "executor",
                "bench",
                "inspect",
                "--wait",
                "--ring",
                "--dispatch",
                "--calls",
                "echo, sum",
            ],
        ),
        (
            &["demo", "--help"],
            &["--wait", "--ring", "--dispatch", "--calls"],
        ),
        (
            &["executor", "--help"],
            &["--connect", "--wait", "--dispatch"],
        ),
        (
            &["bench", "--help"],
            &[
                "--quick",
                "--json",
                "--plot",
                "--wait",
                "--no-pin",
                "--only",
                "--payloads",
                "--quiet",
            ],
        ),
        (&["inspect", "--help"], &["<PID>", "read-only"]),
    ];
    for (args, words) in cases {
        let out = run(args, Duration::from_secs(10));
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for word in words {
            assert!(
                text.contains(word),
                "{args:?} does not mention {word}:\n{text}"
            );
        }
        // Test-only options stay out of the help.
        assert!(
            !text.contains("--case-ms") && !text.contains("--hold-ms"),
            "{text}"
        );
    }
}

#[test]
fn bad_usage_is_refused_in_clap_form_with_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["--wait", "sometimes"],
        &["--ring", "1000"],
        &["--calls", "0"],
        &["demo", "--calls"],
        &["demo", "--frobnicate"],
        &["executor", "--dispatch", "nowhere"],
        &["bench", "--json"],
        &["bench", "--wait", "sometimes"],
        &["bench", "--frobnicate"],
        &["bench", "--payloads", "8,0"],
        &["bench", "--only", "floor-spin,carrier-pigeon"],
        &["inspect"],
        &["inspect", "notapid"],
        &["inspect", "1", "2"],
    ] {
        let out = run(args, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(err.contains("--help"), "{args:?}: {err}");
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

/// The values of one flat JSON object (`"key": value` pairs, no nesting),
/// as raw text without quotes.
fn flat_object(text: &str) -> std::collections::HashMap<String, String> {
    text.trim()
        .trim_start_matches('{')
        .trim_end_matches(',')
        .trim_end_matches('}')
        .split(", \"")
        .map(|pair| {
            let (k, v) = pair.split_once(": ").expect("key: value");
            (
                k.trim_matches('"').to_string(),
                v.trim().trim_matches('"').to_string(),
            )
        })
        .collect()
}

#[test]
fn bench_quick_writes_one_checked_json_object_per_case() {
    let dir = std::env::temp_dir().join(format!("orcwire-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("bench.json");
    // --case-ms (not in --help) shortens every case so the test stays
    // bounded in a debug build; the cases are those of --quick.
    let (_, stdout) = run_ok(
        &[
            "bench",
            "--quick",
            "--case-ms",
            "10",
            "--json",
            json_path.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        assert!(
            stdout.contains("pinned: controller process on CPU"),
            "{stdout}"
        );
    }
    for column in [
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "calls/s",
        "÷floor",
        "vs pipe",
    ] {
        assert!(stdout.contains(column), "no {column:?} column:\n{stdout}");
    }

    let json = std::fs::read_to_string(&json_path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let body = json.trim();
    assert!(body.starts_with('[') && body.ends_with(']'), "{json}");
    let objects: Vec<_> = body[1..body.len() - 1]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(flat_object)
        .collect();
    let allowed = [
        "shm-spin",
        "shm-balanced",
        "shm-block",
        "pipe",
        "uds",
        "floor-spin",
        "floor-futex",
        "shm-raw",
    ];
    let mut seen = std::collections::HashSet::new();
    for o in &objects {
        for key in [
            "transport",
            "direction",
            "payload",
            "mode",
            "p50_ns",
            "p99_ns",
            "p999_ns",
            "ops_per_s",
        ] {
            assert!(o.contains_key(key), "{key} missing from {o:?}");
        }
        let t = o["transport"].as_str();
        assert!(allowed.contains(&t), "unknown transport {t}");
        assert!(
            ["to-executor", "to-controller"].contains(&o["direction"].as_str()),
            "{o:?}"
        );
        assert!(["rtt", "throughput"].contains(&o["mode"].as_str()), "{o:?}");
        let payload: u64 = o["payload"].parse().unwrap();
        // Payload 0 is only the floors' bare ping-pong.
        assert!(payload > 0 || t.starts_with("floor-"), "{o:?}");
        for key in ["p50_ns", "p99_ns", "p999_ns", "ops_per_s"] {
            let v: f64 = o[key].parse().unwrap();
            assert!(v > 0.0, "{key} = {v} in {o:?}");
        }
        let p50: f64 = o["p50_ns"].parse().unwrap();
        let p999: f64 = o["p999_ns"].parse().unwrap();
        assert!(p50 <= p999, "{o:?}");
        // Pipelined shm-* cases are held to shm-raw (of the same payload,
        // here in the run); pipe and uds have no floor for them.
        if o["mode"] == "throughput" {
            assert_eq!(
                o["ratio_to_floor"] != "null",
                t.starts_with("shm-"),
                "{o:?}"
            );
        }
        if t == "shm-raw" {
            // One case in each direction's pass (always controller → child).
            assert_eq!(o["threads"].as_str(), "1", "{o:?}");
        }
        seen.insert((t.to_string(), o["direction"].clone(), o["mode"].clone()));
    }
    for t in allowed {
        assert!(seen.iter().any(|(s, _, _)| s == t), "no {t} case");
    }
    for d in ["to-executor", "to-controller"] {
        for m in ["rtt", "throughput"] {
            assert!(
                seen.iter()
                    .any(|(t, dd, mm)| t.starts_with("shm-") && dd == d && mm == m),
                "no shm {d} {m} case"
            );
        }
    }
    // 8 transports: floors 2 × 6 sizes and shm-raw's 1 throughput case,
    // each in both directions' passes; 5 × (5 sizes × 2 directions + 4
    // throughput cases).
    assert_eq!(objects.len(), 24 + 2 + 5 * 14, "{json}");
}

#[test]
fn bench_shm_raw_measures_the_transport_alone_and_its_child_exits_0() {
    let dir = std::env::temp_dir().join(format!("orcwire-raw-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("raw.json");
    // A bounded run: shm-raw's one case (1 thread × 64 in flight, 64 B,
    // controller → child) and shm-spin's pipelined cases to compare.
    // Success includes the children: the bench fails when one does not
    // exit 0 (within 10 s) after its Hangup or disconnect.
    let (_, stdout) = run_ok(
        &[
            "bench",
            "--case-ms",
            "50",
            "--payloads",
            "none",
            "--only",
            "shm-raw,shm-spin",
            "--json",
            json_path.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert!(stdout.contains("pipelined shm-*"), "no legend:\n{stdout}");
    let json = std::fs::read_to_string(&json_path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let objects: Vec<_> = json
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(flat_object)
        .collect();
    // shm-raw: 1 case in each direction's pass; shm-spin: 2 directions ×
    // 2 thread counts.
    assert_eq!(objects.len(), 2 + 4, "{json}");
    let raw: Vec<_> = objects
        .iter()
        .filter(|o| o["transport"] == "shm-raw")
        .collect();
    let [to_executor, to_controller] = raw.as_slice() else {
        panic!("not two shm-raw cases: {json}");
    };
    assert_eq!(to_executor["direction"], "to-executor", "{json}");
    assert_eq!(to_controller["direction"], "to-controller", "{json}");
    for raw in &raw {
        assert_eq!(raw["mode"], "throughput", "{raw:?}");
        assert_eq!(
            (raw["payload"].as_str(), raw["in_flight"].as_str()),
            ("64", "64")
        );
        let raw_rate: f64 = raw["ops_per_s"].parse().unwrap();
        assert!(raw_rate > 0.0, "{raw:?}");
        assert_eq!(raw["ratio_to_floor"], "1.0000", "{raw:?}");
    }
    // Each shm-spin case is held to the shm-raw case of its own pass.
    for o in objects.iter().filter(|o| o["transport"] == "shm-spin") {
        let rate: f64 = o["ops_per_s"].parse().unwrap();
        let ratio: f64 = o["ratio_to_floor"].parse().unwrap();
        assert!(rate > 0.0, "{o:?}");
        let raw = raw
            .iter()
            .find(|r| r["direction"] == o["direction"])
            .unwrap();
        let raw_rate: f64 = raw["ops_per_s"].parse().unwrap();
        // Printed to 4 places (and the rate to 1).
        let expected = raw_rate / rate;
        assert!(
            (ratio - expected).abs() < 1e-3 * expected.max(1.0),
            "{o:?}: {expected}"
        );
    }
}

#[test]
fn bench_plot_draws_one_line_per_transport_and_direction() {
    let dir = std::env::temp_dir().join(format!("orcwire-plot-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg_path = dir.join("rtt.svg");
    let (out, stdout) = run_ok(
        &[
            "bench",
            "--case-ms",
            "20",
            "--payloads",
            "8,4096",
            "--only",
            "floor-spin,shm-spin,pipe",
            "--plot",
            svg_path.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert!(stdout.contains("wrote "), "{stdout}");
    // Not a terminal: no progress bar on stderr.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // Each runs in both directions' passes (floor-spin always controller
    // → child).
    let lines = [
        "floor-spin to-executor",
        "floor-spin to-controller",
        "shm-spin to-executor",
        "shm-spin to-controller",
        "pipe to-executor",
        "pipe to-controller",
    ];
    for name in lines {
        assert_eq!(svg.matches(name).count(), 1, "legend entry {name:?}");
    }
    // Each line is a polyline in its own colour, with one point per payload
    // (8 B and 4 KiB), and its legend stroke has the same colour.
    let data_lines: Vec<&str> = svg
        .lines()
        .filter(|l| l.contains("<polyline") && l.contains("stroke-width=\"2\""))
        .collect();
    assert_eq!(data_lines.len(), 2 * lines.len(), "{svg}");
    let plotted = data_lines
        .iter()
        .filter(|l| {
            let points = l.split("points=\"").nth(1).unwrap_or("");
            let points = points.split('"').next().unwrap_or("");
            points.split_whitespace().count() == 2
        })
        .count();
    assert_eq!(plotted, 2 * lines.len());
    for label in ["payload (bytes, each way)", "p50 round trip (µs)"] {
        assert!(svg.contains(label), "no axis label {label:?}");
    }
}

#[test]
fn bench_llvm_measures_both_pairings() {
    if !std::path::Path::new("/usr/lib/llvm-14/bin/llvm-jitlink-executor").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "LLVM 14 is missing under CI: `apt-get install llvm-14 llvm-14-dev`"
        );
        return;
    }
    let (_, stdout) = run_ok(
        &["bench-llvm", "--calls", "300", "--rounds", "1"],
        Duration::from_secs(180),
    );
    for expected in [
        "round 0: LLVM -> LLVM p50",
        "orcwire -> LLVM p50",
        "median:",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[test]
fn bench_shows_progress_on_a_terminal() {
    // `script` (util-linux, always on Debian) gives the bench a terminal.
    let mut cmd = Command::new("script");
    cmd.args([
        "-qfec",
        &format!(
            "{} bench --case-ms 20 --payloads 8 --only floor-spin,pipe",
            env!("CARGO_BIN_EXE_orcwire")
        ),
        "/dev/null",
    ]);
    let out = run_command(cmd, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    assert!(out.status.success(), "{text}");
    // The bar counts how many of the run's 10 cases are done (the floor's
    // bare ping-pong and 8 B in each pass, the pipe's 8 B round trips and
    // pipelined cases from 1 and 4 threads both ways).
    assert!(text.contains("0/10 cases"), "no progress bar in:\n{text}");
    assert!(text.contains("1/10 cases"), "the bar never moved:\n{text}");
}
