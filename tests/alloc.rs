//! The call path allocates nothing: with the default configuration, a
//! 64-byte round trip in either direction, and 64-byte calls pipelined 64
//! at a time through a `Pipeline`, make zero heap allocations on either
//! side once warmed up (first calls may size queues and thread-locals).
//!
//! Both endpoints live in this process over a heap-backed shared-memory
//! segment (the same ring code as a memfd), so one counting global
//! allocator sees both sides and every thread: callers, readers, workers.
//! The test binary holds only this test, so nothing else allocates
//! meanwhile.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};

use orcwire::{ControllerBuilder, ExecutorBuilder, WrapperFunctionBuffer};
use orcwire_shm::ShmConfig;
use orcwire_sync::{AtomicUsize, Ordering};

/// Counts every allocation (and reallocation) made through it.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; the
// counter is a plain atomic increment.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`; `ptr` came from this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

#[test]
fn a_64_byte_round_trip_allocates_nothing_in_either_direction() {
    let (controller, executor) = common::connect_pair(
        common::shm_pair(ShmConfig::default()),
        ExecutorBuilder::new()
            .sync_function("echo", WrapperFunctionBuffer::from_slice)
            .controller_handler("echo"),
        ControllerBuilder::new().sync_handler("echo", WrapperFunctionBuffer::from_slice),
        None,
    );
    let to_executor = controller.function_tag("echo").unwrap();
    let to_controller = executor.handler_tag("echo").unwrap();
    let args: Vec<u8> = (0..64u8).collect();

    for (name, ep, tag) in [
        ("controller -> executor", &controller, to_executor),
        ("executor -> controller", &executor, to_controller),
    ] {
        // Warm-up: thread-locals, the follower list, worker start-up.
        for _ in 0..2_000 {
            assert_eq!(ep.call_sync(tag, &args).unwrap().as_slice(), &args[..]);
        }
        let before = allocations();
        for _ in 0..10_000 {
            let out = ep.call_sync(tag, &args).unwrap();
            assert_eq!(out.as_slice(), &args[..]);
        }
        let made = allocations() - before;
        assert_eq!(
            made, 0,
            "{name}: {made} heap allocations in 10,000 round trips of 64 B"
        );

        // Pipelined, 64 in flight: staged, sent in batches, results read
        // in batches, inline handlers' results sent together.
        let mut pipe = ep.pipeline();
        let mut pipelined = |calls: usize| {
            for _ in 0..calls {
                if pipe.in_flight() == 64 {
                    assert_eq!(pipe.next().unwrap().unwrap().as_slice(), &args[..]);
                }
                pipe.submit(tag, &args);
            }
            for r in pipe.by_ref() {
                assert_eq!(r.unwrap().as_slice(), &args[..]);
            }
        };
        pipelined(20_000);
        let before = allocations();
        pipelined(20_000);
        let made = allocations() - before;
        assert_eq!(
            made, 0,
            "{name}: {made} heap allocations in 20,000 pipelined calls of 64 B"
        );
    }
    controller.disconnect();
    executor.disconnect();
}
