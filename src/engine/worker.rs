//! Workers: the connection's own threads (`orcwire-rx`), which lead while
//! no caller wants to and run the handlers of the calls they read.

use super::*;

impl Inner {
    pub(super) fn worker_loop(self: Arc<Self>) {
        let mut last_epoch = self.caller_epoch.load(Ordering::Relaxed);
        let base = self.config.reader_grace.max(Duration::from_micros(50));
        let mut poll = base;
        // The grace before this worker leads once callers have left. While
        // they keep coming back within it (a pipeline between two `next`,
        // a thread calling in a loop), it doubles, up to GRACE_GROWTH
        // times the configured one: a worker that woke every 200 µs to
        // find them back cost such a thread ~1,000 context switches a
        // second on its CPU and 15-25 % of its pipelined rate (2026-11-30
        // (7)). Back to `base` once this worker leads or runs a call.
        let mut grace = base;
        // This worker's batch (its lead turns read calls into its cells),
        // and where stolen results are gathered to be sent: made once.
        let batch = Arc::new(batch::Batch::new());
        let mut out = Vec::with_capacity(batch::BATCH);
        let mut next_look = Instant::now();
        let mut w = self.work.lock();
        loop {
            if w.stop {
                w.workers -= 1;
                self.work_cv.notify_all();
                return;
            }
            if let Some(reason) = w.disconnect.take() {
                drop(w);
                self.flush_outbox();
                self.disconnect_with(reason, false);
                w = self.work.lock();
                continue;
            }
            if !w.refusals.is_empty() {
                let refusals = std::mem::take(&mut w.refusals);
                drop(w);
                self.send_refusals(&refusals);
                w = self.work.lock();
                continue;
            }
            // Another worker's batch stuck in a handler: take what is left.
            if !w.batches.is_empty() && self.look_due(&mut next_look) {
                self.steal_batches(&mut w, false, &mut out);
                if !out.is_empty() {
                    drop(w);
                    self.send_outbox(&out);
                    out.clear();
                    w = self.work.lock();
                    continue;
                }
            }
            if self.may_run_handler(&w) {
                if let Some(call) = w.queue.pop_front() {
                    // Calls arrive through callers: lead soon after them.
                    grace = base;
                    w = self.run_call(w, call);
                    continue;
                }
            }
            // Nothing to run: the results of what ran go out now.
            if self.outbox_full.load(Ordering::Relaxed) && !crate::sync::is_broken("outbox") {
                drop(w);
                self.flush_outbox();
                w = self.work.lock();
                continue;
            }
            // Lead if no caller wants to and none left just now.
            let callers = self.callers.load(Ordering::Relaxed);
            let epoch = self.caller_epoch.load(Ordering::Relaxed);
            // SYNC POINT: reading dead (Acquire half, see `lead_turn`).
            let dead = self.rx_dead.load(Ordering::Acquire);
            if !dead && callers == 0 && epoch == last_epoch && self.try_lead(WORKER) {
                // While other workers run handlers, look up now and then
                // to send their results should one of them block.
                let deadline = (w.busy > 0).then(|| Instant::now() + HANDOVER);
                // Relaxed: read under the work lock, as it is written.
                self.lead_polls.store(deadline.is_some(), Ordering::Relaxed);
                drop(w);
                poll = base;
                grace = base;
                // Filled in place: returned by value, its copy's loads
                // straddled the turn's own narrower stores (a
                // store-forwarding stall on every round trip's path).
                let mut turn = Turn::default();
                self.lead_turn(
                    None,
                    deadline,
                    Some(&*batch),
                    None::<&mut Mine<'_>>,
                    &mut turn,
                );
                self.release_lead();
                w = self.work.lock();
                if let Some(r) = turn.disconnect {
                    w.disconnect.get_or_insert(r);
                }
                // A lone call takes `run_call` below: fewer locked
                // instructions on a round trip's path than a batch.
                if turn.read > 1 && self.may_run_batch(&w) {
                    // Pipelined calls: this worker runs what it read.
                    w = self.run_batch(w, &batch, turn.read, &mut out);
                    continue;
                }
                // This worker runs them next, unless a handler blocks it:
                // then another takes them from the queue (nobody is woken
                // for them now; an idle worker looks at the queue within
                // `IDLE_LOOK`, then every `HANDOVER` while handlers run).
                for call in (1..turn.read).filter_map(|i| batch.take_call(i)) {
                    if !self.enqueue_quietly(&mut w, call) {
                        w.disconnect.get_or_insert(DisconnectReason::Protocol(
                            "the peer keeps sending calls while it does not read their results"
                                .into(),
                        ));
                    }
                }
                if let Some(call) = (turn.read > 0).then(|| batch.take_call(0)).flatten() {
                    if self.may_run_handler(&w) {
                        w = self.run_call(w, call);
                    } else if !self.enqueue(&mut w, call) {
                        w.disconnect.get_or_insert(DisconnectReason::Protocol(
                            "the peer keeps sending calls while it does not read their results"
                                .into(),
                        ));
                    }
                }
                continue;
            }
            // Stand aside: callers drive, another thread leads, or the
            // grace after the last caller runs. Look again later.
            let backs_off = callers > 0 && (epoch == last_epoch || self.timing == Timing::Notified);
            if backs_off {
                self.workers_backed_off.store(true, Ordering::Relaxed);
                // SYNC POINT: caller exit (see `caller_leaves`).
                fence(Ordering::SeqCst);
                if self.callers.load(Ordering::Relaxed) == 0 {
                    // The last caller left meanwhile: look again now.
                    self.workers_backed_off.store(false, Ordering::Relaxed);
                    continue;
                }
            }
            let timeout = match self.timing {
                Timing::Notified if callers == 0 && epoch != last_epoch => {
                    // No grace period: lead at once.
                    last_epoch = epoch;
                    continue;
                }
                Timing::Notified => None,
                Timing::Polled if callers > 0 => {
                    if epoch == last_epoch {
                        poll = (poll * 2).min(Duration::from_millis(50));
                    }
                    Some(poll)
                }
                // Callers came and went since the last look: wait out
                // the grace (longer each time they keep coming back).
                Timing::Polled if epoch != last_epoch => {
                    let wait = grace;
                    grace = (grace * 2).min(base * GRACE_GROWTH);
                    Some(wait)
                }
                Timing::Polled if w.busy > 0 => Some(HANDOVER),
                // Another worker leads and nothing runs: every event that
                // needs us notifies; the timeout only bounds a lead left
                // free by a handler that blocks (see `IDLE_LOOK`).
                Timing::Polled => Some(IDLE_LOOK),
            };
            last_epoch = epoch;
            w.idle += 1;
            w = wait_cv(&self.work_cv, w, timeout);
            w.idle -= 1;
        }
    }

    /// Whether this worker should look at other workers' batches now: at
    /// most every [`HANDOVER`] (a batch is stuck when two looks find it at
    /// the same call), or always under [`Timing::Notified`].
    fn look_due(&self, next_look: &mut Instant) -> bool {
        if self.timing == Timing::Notified {
            return true;
        }
        let now = Instant::now();
        if now < *next_look {
            return false;
        }
        *next_look = now + HANDOVER;
        true
    }

    /// Runs one incoming call (unless the connection is closing), with the
    /// work lock released meanwhile; makes sure another worker stays idle
    /// to lead while this one is busy.
    pub(super) fn run_call<'a>(
        self: &'a Arc<Self>,
        mut w: MutexGuard<'a, Work>,
        call: Incoming,
    ) -> MutexGuard<'a, Work> {
        // A handler starts only inside the gate: once disconnect closed
        // it, queued and just-read calls are dropped unrun.
        // A load under the work lock suffices: `disconnect` closes the
        // gate before it takes this lock (to drop the queue), and once it
        // has taken it, it counts this worker as busy.
        if self.gate.is_closed() {
            return w;
        }
        if w.workers == 1 {
            // Start the standby, once: it leads while handlers run. More
            // workers start only where they are needed (a blocked send, a
            // call queued by a waiting caller), never on this hot path,
            // where a worker that has answered but not yet left `busy`
            // would make every race look like a need.
            self.wake_or_spawn(&mut w);
        } else if self.timing == Timing::Notified {
            // No standby polls under this policy: hand the lead on now.
            self.work_cv.notify_one();
        }
        w.busy += 1;
        // Its result joins the outbox if more calls wait to run after it
        // (or results before it wait there): they go out together. Not if
        // this is the only worker there can be: no other would send them
        // while a later handler blocks.
        let batch = self.config.max_workers > 1
            && !(w.queue.is_empty()
                && w.outbox.results.is_empty()
                && !self.outbox_full.load(Ordering::Relaxed));
        if batch
            && self.lead.load(Ordering::Relaxed) == WORKER
            && !self.lead_polls.load(Ordering::Relaxed)
        {
            // Another worker leads and may sleep in `recv` until the peer
            // sends something, which it may do only once it has these
            // results: make it lead again with a deadline (`busy` is up
            // now), so that it sends them if this handler blocks.
            self.transport.interrupt_recv();
        }
        drop(w);
        let idle_of = IDLE_WORKER_OF.with(|c| c.replace(0));
        // The answer of a handler that answers with its return value (or of
        // a call to an unknown tag), run here without a responder.
        let mut answer = None;
        match &self.dispatcher {
            None => {
                let prev = IN_HANDLER_OF.with(|h| h.replace(self.id()));
                match self.handlers.get(call.tag) {
                    Some(HandlerEntry {
                        sync: Some(f), ..
                    }) => {
                        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            f(call.args.as_slice())
                        }));
                        answer = Some(ran.unwrap_or_else(|_| {
                            WrapperFunctionBuffer::out_of_band_error(
                                "the handler panicked before it returned its result",
                            )
                        }));
                    }
                    Some(entry) => {
                        let responder =
                            Responder::new(call.seq, Arc::clone(self) as Arc<dyn ResultSink>);
                        let prev_outbox =
                            OUTBOX_OF.with(|o| o.replace(if batch { self.id() } else { 0 }));
                        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            (entry.f)(call.args, responder)
                        }));
                        OUTBOX_OF.with(|o| o.set(prev_outbox));
                        // A panicking handler's responder answered with an
                        // error as it unwound; the worker carries on.
                        drop(ran);
                    }
                    None => answer = Some(self.handlers.unknown_tag_error(call.tag)),
                }
                IN_HANDLER_OF.with(|h| h.set(prev));
            }
            Some(d) => {
                let responder = Responder::new(call.seq, Arc::clone(self) as Arc<dyn ResultSink>);
                let me = Arc::clone(self);
                let (tag, args) = (call.tag, call.args);
                d.dispatch(Box::new(move || me.invoke(tag, args, responder)));
            }
        }
        IDLE_WORKER_OF.with(|c| c.set(idle_of));
        if !batch {
            if let Some(result) = answer.take() {
                self.send_one_result(call.seq, &result);
            }
        }
        let mut w = self.work.lock();
        w.busy -= 1;
        if let Some(result) = answer {
            // The work lock taken anyway: no lock of its own per result.
            w.outbox.results.push((call.seq, result));
            // Relaxed: a hint; every reader takes the work lock.
            self.outbox_full.store(true, Ordering::Relaxed);
        }
        w
    }

    pub(super) fn invoke(&self, tag: u64, args: WrapperFunctionBuffer, responder: Responder) {
        match self.handlers.get(tag) {
            Some(entry) => (entry.f)(args, responder),
            None => responder.respond(self.handlers.unknown_tag_error(tag)),
        }
    }

    pub(super) fn send_refusals(self: &Arc<Self>, seqs: &[u64]) {
        const BUSY: &str = "the callee is busy: its queue of incoming calls is full; call again later, or raise its EndpointConfig::max_queued_calls";
        let (kind, bytes) = self.error_result(BUSY);
        for &seq in seqs {
            let Ok(_inside) = self.gate.enter() else {
                return;
            };
            if self
                .send(Opcode::Result, seq, kind, bytes, None)
                .is_err()
            {
                return;
            }
        }
    }
}
