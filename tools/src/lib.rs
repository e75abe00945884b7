//! orcwire-tools: the `orcwire` command-line tool and the benchmark
//! machinery it shares with the criterion suite. Not published: this is
//! tooling around the transport, kept out of the library crates so that
//! `orcwire-shm` holds only the transport.
//!
//! * [`bench`](mod@bench): two-process benchmark cases over every transport and the
//!   raw floor, statistics, CPU pinning, the JSON report.
//! * [`plot`]: the SVG chart of `orcwire bench --plot`.
//!
//! The binary (`src/bin/orcwire/`) adds the command line: `demo`,
//! `executor`, `bench` and `inspect`.
#![deny(missing_docs)]

pub mod bench;
pub mod plot;
