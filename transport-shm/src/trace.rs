//! Phase trace: where each side of a pipelined connection spends its time,
//! in nanoseconds a call, measured on the real path with the time-stamp
//! counter. Compiled in only with the `phase-trace` feature (and never
//! under loom); without it [`rec`] is an empty inline function, so the
//! shipped transport pays nothing.
//!
//! [`ShmTransport`](crate::ShmTransport) records five events per side,
//! each with the time-stamp counter and a count: a batch send's start and
//! end (with its message count), a batch receive's start, the moment its
//! first message was there, and its end (with the messages taken). The
//! time between two consecutive events of one side is a *phase*; summed
//! over a run and divided by the calls, the phases say how many
//! nanoseconds a call each side spends reading, between reading and
//! sending (the engine and the handler, or the caller's own loop),
//! sending, and waiting for the peer ([`summarize`]). The sides record
//! into buffers of their own (no line shared between the two CPUs), so
//! the trace costs each event a counter read and two stores.
//!
//! ```text
//! cargo run --release -p orcwire-tools --features phase-trace \
//!     --example pinned_layers -- 400000 1 pipeline trace
//! ```
//!
//! Relies on: [`Side`] for the buffer, the `sync` shim's atomics.

use crate::layout::Side;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Event {
    /// `send_batch` started (count: the messages given).
    SendStart = 1,
    /// `send_batch` published its last frame (count: the messages).
    SendEnd = 2,
    /// `recv_batch` started.
    RecvStart = 3,
    /// `recv_batch`'s first message was there (count 1 if it was waited
    /// for, 0 if it was there at the first look).
    RecvFirst = 4,
    /// `recv_batch` returned (count: the messages taken).
    RecvEnd = 5,
}

impl Event {
    #[cfg(all(feature = "phase-trace", not(orcwire_loom)))]
    fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            1 => Self::SendStart,
            2 => Self::SendEnd,
            3 => Self::RecvStart,
            4 => Self::RecvFirst,
            5 => Self::RecvEnd,
            _ => return None,
        })
    }

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::SendStart => "send start",
            Self::SendEnd => "send end",
            Self::RecvStart => "receive start",
            Self::RecvFirst => "first message",
            Self::RecvEnd => "receive end",
        }
    }
}

/// One recorded event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Time-stamp counter ticks.
    pub ticks: u64,
    /// The side that recorded it.
    pub side: Side,
    /// What happened.
    pub event: Event,
    /// The event's count (see [`Event`]).
    pub count: u64,
}

/// Records `event` on `side`'s buffer (nothing without the feature).
#[inline(always)]
pub fn rec(side: Side, event: Event, count: u64) {
    #[cfg(all(feature = "phase-trace", not(orcwire_loom)))]
    imp::rec(side, event, count);
    #[cfg(not(all(feature = "phase-trace", not(orcwire_loom))))]
    let _ = (side, event, count);
}

#[cfg(all(feature = "phase-trace", not(orcwire_loom)))]
pub use imp::{take, ticks_per_ns};

#[cfg(all(feature = "phase-trace", not(orcwire_loom)))]
mod imp {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use super::{Event, Record, Side};
    use crate::sync::{AtomicU64, AtomicUsize, Ordering};

    /// Events each side's buffer holds (two words each); later ones are
    /// dropped.
    const EVENTS: usize = 1 << 20;

    /// One side's events. Written only by the threads of that side that
    /// send or receive (one at a time in the pipelined loops this is
    /// for); the index is a plain load and store, not a read-modify-write.
    struct Buffer {
        next: crossbeam_utils::CachePadded<AtomicUsize>,
        words: Box<[AtomicU64]>,
    }

    fn buffers() -> &'static [Buffer; 2] {
        static BUFFERS: OnceLock<[Buffer; 2]> = OnceLock::new();
        BUFFERS.get_or_init(|| {
            std::array::from_fn(|_| Buffer {
                next: crossbeam_utils::CachePadded::new(AtomicUsize::new(0)),
                words: (0..2 * EVENTS).map(|_| AtomicU64::new(0)).collect(),
            })
        })
    }

    fn index(side: Side) -> usize {
        match side {
            Side::Controller => 0,
            Side::Executor => 1,
        }
    }

    #[inline(always)]
    fn now() -> u64 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `rdtsc` reads the time-stamp counter; no memory is
        // touched and it cannot fault.
        unsafe {
            std::arch::x86_64::_rdtsc()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            static START: OnceLock<Instant> = OnceLock::new();
            START.get_or_init(Instant::now).elapsed().as_nanos() as u64
        }
    }

    pub(super) fn rec(side: Side, event: Event, count: u64) {
        let t = now();
        let b = &buffers()[index(side)];
        // Relaxed: the buffer is read by `take` after the run, once the
        // recording threads are done (joined or quiet).
        let i = b.next.load(Ordering::Relaxed);
        if i >= EVENTS {
            return;
        }
        b.next.store(i + 1, Ordering::Relaxed);
        b.words[2 * i].store(t, Ordering::Relaxed);
        b.words[2 * i + 1].store((event as u64) << 56 | count, Ordering::Relaxed);
    }

    /// Takes every recorded event of both sides (oldest first per side)
    /// and empties the buffers. Call once the traced threads are quiet.
    pub fn take() -> Vec<Record> {
        let mut out = Vec::new();
        for side in [Side::Controller, Side::Executor] {
            let b = &buffers()[index(side)];
            let n = b.next.load(Ordering::Relaxed).min(EVENTS);
            for i in 0..n {
                let code = b.words[2 * i + 1].load(Ordering::Relaxed);
                if let Some(event) = Event::from_code(code >> 56) {
                    out.push(Record {
                        ticks: b.words[2 * i].load(Ordering::Relaxed),
                        side,
                        event,
                        count: code & ((1 << 56) - 1),
                    });
                }
            }
            b.next.store(0, Ordering::Relaxed);
        }
        out
    }

    /// The time-stamp counter's rate, measured against the clock over
    /// `over` (50 ms is plenty).
    pub fn ticks_per_ns(over: Duration) -> f64 {
        let (t0, c0) = (Instant::now(), now());
        std::thread::sleep(over);
        let (t1, c1) = (Instant::now(), now());
        (c1 - c0) as f64 / (t1 - t0).as_nanos().max(1) as f64
    }
}

/// One phase of one side: the time from one kind of event to the next.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    /// The side.
    pub side: Side,
    /// The event the phase starts at.
    pub from: Event,
    /// The event it ends at.
    pub to: Event,
    /// How often it happened.
    pub times: usize,
    /// Nanoseconds a call (its total over the calls sent in the span).
    pub ns_per_call: f64,
}

/// The phases of a trace, over the middle half of its time span (the
/// start and the end of a run are not its steady state): calls are
/// counted as the messages the executor sent back (its `SendEnd` counts).
/// Phases taking less than 1 % of the span are left out. Returns the
/// calls counted, the span in ns and the phases, largest first within
/// each side.
pub fn summarize(records: &[Record], ticks_per_ns: f64) -> (u64, f64, Vec<Phase>) {
    let Some(first) = records.iter().map(|r| r.ticks).min() else {
        return (0, 0.0, Vec::new());
    };
    let last = records.iter().map(|r| r.ticks).max().unwrap_or(first);
    let (from, to) = (first + (last - first) / 4, first + 3 * (last - first) / 4);
    let span = (to - from) as f64 / ticks_per_ns;
    let calls: u64 = records
        .iter()
        .filter(|r| {
            r.side == Side::Executor && r.event == Event::SendEnd && (from..to).contains(&r.ticks)
        })
        .map(|r| r.count)
        .sum();
    let mut phases = Vec::new();
    for side in [Side::Controller, Side::Executor] {
        let mut mine: Vec<&Record> = records
            .iter()
            .filter(|r| r.side == side && (from..to).contains(&r.ticks))
            .collect();
        mine.sort_by_key(|r| r.ticks);
        let mut sums: std::collections::BTreeMap<(Event, Event), (usize, u64)> =
            std::collections::BTreeMap::new();
        for w in mine.windows(2) {
            let e = sums.entry((w[0].event, w[1].event)).or_default();
            e.0 += 1;
            e.1 += w[1].ticks - w[0].ticks;
        }
        let mut side_phases: Vec<Phase> = sums
            .into_iter()
            .filter(|(_, (_, t))| *t as f64 / ticks_per_ns >= span / 100.0)
            .map(|((a, b), (times, t))| Phase {
                side,
                from: a,
                to: b,
                times,
                ns_per_call: t as f64 / ticks_per_ns / calls.max(1) as f64,
            })
            .collect();
        side_phases.sort_by(|a, b| b.ns_per_call.total_cmp(&a.ns_per_call));
        phases.extend(side_phases);
    }
    (calls, span, phases)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ticks: u64, side: Side, event: Event, count: u64) -> Record {
        Record {
            ticks,
            side,
            event,
            count,
        }
    }

    /// A steady exchange at 1 tick per ns: each side's 400-tick cycle is
    /// 100 waiting, 100 reading, 150 working, 50 sending, 16 calls a
    /// cycle.
    fn steady(cycles: u64) -> Vec<Record> {
        let mut out = Vec::new();
        for c in 0..cycles {
            let t = c * 400;
            for (side, off) in [(Side::Controller, 0), (Side::Executor, 200)] {
                let t = t + off;
                out.push(r(t, side, Event::RecvStart, 0));
                out.push(r(t + 100, side, Event::RecvFirst, 0));
                out.push(r(t + 200, side, Event::RecvEnd, 16));
                out.push(r(t + 350, side, Event::SendStart, 16));
                out.push(r(t + 400, side, Event::SendEnd, 16));
            }
        }
        out
    }

    #[test]
    fn phases_are_the_time_between_events_per_call() {
        let (calls, span, phases) = summarize(&steady(1000), 1.0);
        // The middle half: 500 cycles of 16 calls, 200,000 ns.
        assert!((calls as i64 - 8000).abs() <= 16, "calls {calls}");
        assert!((span - 200_000.0).abs() < 400.0, "span {span}");
        let get = |side, from, to| {
            phases
                .iter()
                .find(|p| p.side == side && p.from == from && p.to == to)
                .map(|p| p.ns_per_call)
                .unwrap_or(f64::NAN)
        };
        for side in [Side::Controller, Side::Executor] {
            let work = get(side, Event::RecvEnd, Event::SendStart);
            let read = get(side, Event::RecvFirst, Event::RecvEnd);
            let wait = get(side, Event::RecvStart, Event::RecvFirst);
            let send = get(side, Event::SendStart, Event::SendEnd);
            assert!((work - 150.0 / 16.0).abs() < 0.1, "{side:?} work {work}");
            assert!((read - 100.0 / 16.0).abs() < 0.1, "{side:?} read {read}");
            assert!((wait - 100.0 / 16.0).abs() < 0.1, "{side:?} wait {wait}");
            assert!((send - 50.0 / 16.0).abs() < 0.1, "{side:?} send {send}");
        }
        // Largest first within a side.
        assert_eq!(phases[0].side, Side::Controller);
        assert_eq!(
            (phases[0].from, phases[0].to),
            (Event::RecvEnd, Event::SendStart)
        );
    }

    #[test]
    fn an_empty_trace_has_no_phases() {
        assert_eq!(summarize(&[], 1.0), (0, 0.0, Vec::new()));
    }

    #[cfg(all(feature = "phase-trace", not(orcwire_loom)))]
    #[test]
    fn a_transport_pair_records_its_batches() {
        use std::sync::Arc;

        use orcwire::transport::{Outgoing, Transport};
        use orcwire::{Message, Opcode, WrapperFunctionBuffer};

        use crate::{required_size, HeapMapping, SharedMapping, ShmConfig, ShmTransport};

        let config = ShmConfig::default();
        let mapping: Arc<dyn SharedMapping> =
            Arc::new(HeapMapping::new(required_size(&config)).unwrap());
        let c = ShmTransport::create(Arc::clone(&mapping), config).unwrap();
        let e = ShmTransport::attach(mapping, config).unwrap();
        let _ = take();
        let frames: Vec<Outgoing<'_>> = (1..=5)
            .map(|seq| Outgoing {
                opcode: Opcode::CallWrapper,
                seq,
                tag: 1,
                payload: b"args",
            })
            .collect();
        c.send_batch(&frames, None, &|| {}).unwrap();
        let mut msg = Message::new(Opcode::Result, 0, 0, WrapperFunctionBuffer::new());
        let mut seqs = Vec::new();
        e.recv_batch(None, 16, &mut msg, &mut |m| {
            seqs.push(m.seq);
            true
        })
        .unwrap();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        let got: Vec<(Side, Event, u64)> =
            take().iter().map(|r| (r.side, r.event, r.count)).collect();
        let want = [
            (Side::Controller, Event::SendStart, 5),
            (Side::Controller, Event::SendEnd, 5),
            (Side::Executor, Event::RecvStart, 0),
            (Side::Executor, Event::RecvFirst, 0),
            (Side::Executor, Event::RecvEnd, 5),
        ];
        // In order; other tests' transports may record in between when the
        // whole suite runs with the feature (CI runs this module alone).
        let mut rest = got.iter();
        for w in want {
            assert!(
                rest.any(|g| *g == w),
                "{w:?} missing or out of order in {got:?}"
            );
        }
        assert!(ticks_per_ns(std::time::Duration::from_millis(20)) > 0.0);
    }
}
