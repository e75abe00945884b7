mod table {
    use super::super::*;

    struct Host(PendingTable);
    impl CallHost for Host {
        fn table(&self) -> &PendingTable {
            &self.0
        }
        fn wait_for(&self, _: u64, _: Option<Instant>, _: &mut bool) -> Result<(), CallError> {
            std::thread::yield_now();
            Ok(())
        }
    }

    fn host(n: usize) -> Arc<Host> {
        Arc::new(Host(PendingTable::new(n)))
    }

    fn call(h: &Arc<Host>) -> PendingCall {
        let seq = h.0.register().unwrap();
        PendingCall::new(seq, Arc::clone(h) as Arc<dyn CallHost>)
    }

    #[test]
    fn register_many_skips_busy_slots_and_stops_when_full() {
        let t = PendingTable::new(8);
        // Two slots busy: the run of eight numbers skips them, and single
        // registrations fill the rest up to the table's size.
        let a = t.register().unwrap();
        let b = t.register().unwrap();
        let mut out = [0u64; 8];
        assert_eq!(t.register_many(&mut out), Ok(6));
        let mut all: Vec<u64> = out[..6].iter().copied().chain([a, b]).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 8, "sequence numbers must be distinct: {out:?}");
        assert_eq!(t.len(), 8);
        // Full: not even one.
        assert_eq!(t.register_many(&mut out[..1]), Err(CallError::TooManyPending(8)));
        // Each taken slot completes under its own number, once.
        for &seq in &out[..6] {
            assert_eq!(
                t.complete(seq, Ok(WrapperFunctionBuffer::from_slice(&seq.to_le_bytes()))),
                Ok(Completed::Delivered)
            );
            let got = t.try_take(seq, false).unwrap().unwrap();
            assert_eq!(got.as_slice(), &seq.to_le_bytes());
        }
        assert_eq!(t.len(), 2);
        // A number never handed out is refused.
        assert!(t.complete(1 << 40, Ok(WrapperFunctionBuffer::new())).is_err());
    }

    #[test]
    fn take_own_frees_the_slot_once_and_loses_to_an_earlier_claim() {
        let t = PendingTable::new(4);
        // The owner takes its call: the slot is free at once and a result
        // for it that comes later (forged, or a duplicate) is discarded.
        let a = t.register().unwrap();
        assert!(t.take_own(a));
        assert_eq!(t.len(), 0);
        assert!(!t.take_own(a), "a call is taken once");
        assert_eq!(
            t.complete(a, Ok(WrapperFunctionBuffer::from_slice(b"late"))),
            Ok(Completed::Discarded)
        );
        assert!(t.try_take(a, false).is_none());
        // A waker registered meanwhile is dropped with the call, not left
        // for the slot's next owner.
        let b = t.register().unwrap();
        let waker = Arc::new(CountWake::default());
        t.register_waker(b, &Waker::from(Arc::clone(&waker)));
        assert!(t.take_own(b));
        assert_eq!(Arc::strong_count(&waker), 1, "the slot kept our waker");
        assert_eq!(waker.0.load(Ordering::Relaxed), 0, "a done call was woken");
        // Disconnect failed the call first: the owner's take loses and the
        // error is what the call ends with.
        let c = t.register().unwrap();
        t.fail_all(CallError::Disconnected);
        assert!(!t.take_own(c));
        assert_eq!(t.try_take(c, false), Some(Err(CallError::Disconnected)));
        assert_eq!(t.len(), 0);
        // The slots are reusable.
        let d = t.register().unwrap();
        assert!(t.take_own(d));
    }

    #[derive(Default)]
    struct CountWake(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn complete_once_then_discarded() {
        let h = host(4);
        let c = call(&h);
        assert_eq!(c.seq(), 1);
        let b = |s: &[u8]| Ok(WrapperFunctionBuffer::from_slice(s));
        assert_eq!(h.0.complete(1, b(b"x")), Ok(Completed::Delivered));
        assert!(c.is_done());
        assert_eq!(h.0.complete(1, b(b"y")), Ok(Completed::Discarded));
        assert_eq!(h.0.complete(99, b(b"y")), Err(UnknownSeq(99)));
        assert_eq!(h.0.complete(0, b(b"y")), Err(UnknownSeq(0)));
        assert_eq!(c.wait().unwrap().as_slice(), b"x");
        assert_eq!(h.0.len(), 0);
    }

    #[test]
    fn dropped_call_frees_its_slot_now_or_when_the_result_comes() {
        let h = host(2);
        let a = call(&h);
        let b = call(&h);
        assert_eq!(h.0.register(), Err(CallError::TooManyPending(2)));
        let (sa, sb) = (a.seq(), b.seq());
        drop(a); // before its result
        h.0.complete(sb, Ok(WrapperFunctionBuffer::new())).unwrap();
        drop(b); // after its result
        assert_eq!(
            h.0.complete(sa, Ok(WrapperFunctionBuffer::new())),
            Ok(Completed::Discarded)
        );
        assert_eq!(h.0.len(), 0);
        // Both slots are free again.
        let _c = call(&h);
        let _d = call(&h);
        assert_eq!(h.0.len(), 2);
    }

    #[test]
    fn abandoned_then_answered_frees_the_slot() {
        let h = host(2);
        let a = call(&h);
        let seq = a.seq();
        drop(a);
        assert_eq!(h.0.len(), 0);
        assert_eq!(
            h.0.complete(seq, Ok(WrapperFunctionBuffer::from_slice(&[1; 100]))),
            Ok(Completed::Discarded)
        );
        // The completer freed it.
        for _ in 0..2 {
            std::mem::forget(call(&h));
        }
    }

    #[test]
    fn fail_all_completes_everything() {
        let h = host(16);
        let calls: Vec<_> = (0..10).map(|_| call(&h)).collect();
        h.0.fail_all(CallError::PeerDied);
        h.0.fail_all(CallError::Disconnected);
        for c in calls {
            let seq = c.seq();
            assert_eq!(c.wait(), Err(CallError::PeerDied));
            assert_eq!(
                h.0.complete(seq, Ok(WrapperFunctionBuffer::new())),
                Ok(Completed::Discarded)
            );
        }
        assert_eq!(h.0.len(), 0);
    }

    #[test]
    fn timeout_leaves_the_call_pending() {
        let h = host(4);
        let mut c = call(&h);
        assert_eq!(
            c.wait_timeout(Duration::from_millis(5)),
            Err(CallError::TimedOut)
        );
        h.0.complete(c.seq(), Ok(WrapperFunctionBuffer::from_slice(b"late")))
            .unwrap();
        assert_eq!(c.wait_timeout(Duration::ZERO).unwrap().as_slice(), b"late");
        assert_eq!(c.wait_timeout(Duration::ZERO), Err(CallError::AlreadyTaken));
    }
}

mod wake {
    use super::super::*;
    use std::task::Wake;

    struct Count(AtomicU64);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    struct Host(PendingTable);
    impl CallHost for Host {
        fn table(&self) -> &PendingTable {
            &self.0
        }
        fn wait_for(&self, _: u64, _: Option<Instant>, _: &mut bool) -> Result<(), CallError> {
            Ok(())
        }
    }

    #[test]
    fn a_polled_call_is_woken_once_by_its_result() {
        let h = Arc::new(Host(PendingTable::new(4)));
        let seq = h.0.register().unwrap();
        let mut call = PendingCall::new(seq, Arc::clone(&h) as Arc<dyn CallHost>);
        let count = Arc::new(Count(AtomicU64::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut call).poll(&mut cx).is_pending());
        h.0.complete(seq, Ok(WrapperFunctionBuffer::new())).unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(Pin::new(&mut call).poll(&mut cx).is_ready());
    }
}

