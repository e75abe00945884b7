//! Callers: a synchronous caller waits for its own result, leading when
//! the lead is free and never running a handler; the queue of incoming
//! calls and the would-deadlock check.

use super::*;

impl Inner {
    /// Blocks until call `seq` is done or `deadline` passes, leading when
    /// the lead is free; never runs a handler.
    pub(super) fn wait_for_call(
        self: &Arc<Self>,
        seq: u64,
        deadline: Option<Instant>,
        registered: &mut bool,
    ) -> Result<(), CallError> {
        self.wait_for_mine(seq, deadline, registered, None::<&mut Mine<'_>>)
    }

    /// [`wait_for_call`](Self::wait_for_call) for a caller that takes the
    /// results of its own calls as it reads them (`mine`, see
    /// [`lead_turn`](Self::lead_turn)): it also ends once `mine` took call
    /// `seq`'s.
    pub(crate) fn wait_for_mine<M>(
        self: &Arc<Self>,
        seq: u64,
        deadline: Option<Instant>,
        registered: &mut bool,
        mut mine: Option<&mut M>,
    ) -> Result<(), CallError>
    where
        M: FnMut(u64, &mut WrapperFunctionBuffer) -> bool + ?Sized,
    {
        // This thread's waker is made on its first wait, not on the first
        // time it happens to park: a thread's calls then allocate nothing
        // after its first one, however the scheduler interleaves them.
        THREAD_WAKER.with(|_| {});
        // A handler waiting inside its batch: the results before it go
        // out first (the peer may need them to answer us).
        self.flush_outbox();
        self.flush_own_batch();
        self.callers.fetch_add(1, Ordering::SeqCst);
        let mut active = true;
        let r = self.caller_loop(seq, deadline, &mut active, registered, &mut mine);
        if active {
            self.caller_leaves();
        }
        r
    }

    /// A caller stops wanting the lead.
    #[inline]
    pub(super) fn caller_leaves(&self) {
        if self.callers.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Not a read-modify-write: two last callers racing both store
            // the same successor, and the worker only asks whether the
            // value changed.
            let epoch = self.caller_epoch.load(Ordering::Relaxed);
            self.caller_epoch
                .store(epoch.wrapping_add(1), Ordering::Relaxed);
            // SYNC POINT: caller exit. Pairs with the fence in
            // `worker_loop`: we lowered `callers`, then read the flag; the
            // worker raised the flag, then reads `callers`. A load first:
            // the flag is rarely up, and then no read-modify-write.
            fence(Ordering::SeqCst);
            if self.workers_backed_off.load(Ordering::Relaxed) {
                self.wake_backed_off_workers();
            }
        }
    }

    #[cold]
    fn wake_backed_off_workers(&self) {
        if self.workers_backed_off.swap(false, Ordering::Relaxed) {
            let _w = self.work.lock();
            self.work_cv.notify_all();
        }
    }

    /// The caller's wait. While `active` it counts in `callers` and so
    /// keeps the workers from leading; once it reads an incoming call it
    /// turns passive: the peer is calling us while we wait (a long call, or
    /// a re-entrant chain), so a worker should lead and run those calls on
    /// the thread that reads them, and this caller's result reaches it by
    /// its waker. A passive caller still takes a lead that lies free.
    pub(super) fn caller_loop<M>(
        self: &Arc<Self>,
        seq: u64,
        deadline: Option<Instant>,
        active: &mut bool,
        registered: &mut bool,
        mine: &mut Option<&mut M>,
    ) -> Result<(), CallError>
    where
        M: FnMut(u64, &mut WrapperFunctionBuffer) -> bool + ?Sized,
    {
        let mut interrupted = false;
        loop {
            if self.pending.is_done(seq) || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            // SYNC POINT: reading dead (Acquire half, see `lead_turn`).
            if self.rx_dead.load(Ordering::Acquire) {
                // Nothing more will be read: disconnect's `fail_all`
                // completes this call and wakes us.
                self.park_for_result(seq, deadline, registered, || true);
                continue;
            }
            if !*active && !self.workers_saturated() {
                // The workers lead and run the peer's calls; our result
                // comes by our waker. Look again now and then in case
                // every worker gets stuck in a handler.
                self.park_for_result(seq, deadline, registered, || true);
                self.check_would_deadlock()?;
                continue;
            }
            if self.try_lead(CALLER) {
                interrupted = false;
                // Filled in place (see `worker_loop`).
                let mut turn = Turn::default();
                self.lead_turn(Some(seq), deadline, None, mine.as_deref_mut(), &mut turn);
                self.release_lead();
                let (saw_call, own_taken) = (turn.saw_call, turn.own_taken);
                self.after_caller_turn(turn);
                if own_taken {
                    return Ok(());
                }
                self.check_would_deadlock()?;
                if saw_call && *active {
                    *active = false;
                    self.caller_leaves();
                    // Let the woken worker take the lead first.
                    self.park_as_follower(seq, deadline, registered);
                }
                continue;
            }
            if self.is_disconnected() {
                // Step 5 completes every call; nothing more will be read.
                return Ok(());
            }
            // Someone else leads. A worker may be asleep in `recv`: ask it
            // once to stand aside (it sees `callers > 0` and releases).
            if *active && !interrupted && self.lead.load(Ordering::Relaxed) == WORKER {
                interrupted = true;
                self.transport.interrupt_recv();
            }
            self.park_as_follower(seq, deadline, registered);
            self.check_would_deadlock()?;
        }
    }

    /// Parks until call `seq`'s result wakes us, `deadline`, or
    /// [`LOOK_AGAIN`] (spurious returns are fine: callers re-check), unless
    /// `still_wait` says otherwise once the waker is in place.
    pub(super) fn park_for_result(
        &self,
        seq: u64,
        deadline: Option<Instant>,
        registered: &mut bool,
        still_wait: impl Fn() -> bool,
    ) {
        THREAD_WAKER.with(|w| self.pending.register_waker(seq, w));
        *registered = true;
        if !self.pending.is_done(seq) && still_wait() {
            let cap = Instant::now() + LOOK_AGAIN;
            park_until(Some(deadline.map_or(cap, |d| d.min(cap))));
        }
    }

    /// Parks until our result comes, the lead is released, or `deadline`.
    pub(super) fn park_as_follower(&self, seq: u64, deadline: Option<Instant>, registered: &mut bool) {
        self.as_follower(|| {
            self.park_for_result(seq, deadline, registered, || {
                self.lead.load(Ordering::Relaxed) != FREE
            })
        });
    }

    /// Runs `wait` (a park that ends once the lead looks free again) as a
    /// follower: registered where `release_lead` unparks it.
    pub(super) fn as_follower(&self, wait: impl FnOnce()) {
        self.followers.lock().push(thread::current());
        self.follower_count.fetch_add(1, Ordering::Relaxed);
        // SYNC POINT: follower hand-over (see `release_lead`).
        fence(Ordering::SeqCst);
        wait();
        self.follower_count.fetch_sub(1, Ordering::Relaxed);
        let me = thread::current().id();
        let mut f = self.followers.lock();
        if let Some(i) = f.iter().position(|t| t.id() == me) {
            f.swap_remove(i);
        }
    }

    #[inline]
    pub(super) fn after_caller_turn(self: &Arc<Self>, turn: Turn) {
        if let Some(r) = turn.disconnect {
            self.caller_saw_disconnect(r);
        }
    }

    #[cold]
    fn caller_saw_disconnect(self: &Arc<Self>, r: DisconnectReason) {
        let mut w = self.work.lock();
        w.disconnect.get_or_insert(r);
        self.wake_or_spawn(&mut w);
    }

    /// Queues an incoming call for a worker, or refuses it as busy when the
    /// queue is full; `false` when even the refusals overflow.
    pub(super) fn enqueue(self: &Arc<Self>, w: &mut Work, call: Incoming) -> bool {
        let queued = self.enqueue_quietly(w, call);
        if queued {
            self.wake_or_spawn(w);
        }
        queued
    }

    /// [`enqueue`](Self::enqueue) without waking a worker: for calls the
    /// worker queueing them runs itself next.
    pub(super) fn enqueue_quietly(&self, w: &mut Work, call: Incoming) -> bool {
        if w.queue.len() < self.config.max_queued_calls.max(1) {
            w.queue.push_back(call);
        } else if w.refusals.len() < MAX_REFUSALS {
            w.refusals.push(call.seq);
        } else {
            return false;
        }
        true
    }

    /// Whether a worker may start a handler now: unless it is the only
    /// one allowed, another worker must stay free to read (or be startable),
    /// so results and refusals keep flowing while handlers run.
    pub(super) fn may_run_handler(&self, w: &Work) -> bool {
        let max = self.config.max_workers.max(1);
        max == 1 || w.workers < max || w.workers - w.busy >= 2
    }

    /// Wakes an idle worker, or starts one if none is idle (and the cap
    /// allows). Every idle worker re-checks everything it could do, so one
    /// is enough.
    pub(super) fn wake_or_spawn(self: &Arc<Self>, w: &mut Work) {
        if w.stop {
            return;
        }
        if w.idle > 0 {
            self.work_cv.notify_one();
        } else if w.workers < self.config.max_workers.max(1) {
            let _ = self.spawn_worker(w);
        }
    }

    /// Whether no worker is idle and no more can start: then nobody but a
    /// caller can lead.
    pub(super) fn workers_saturated(&self) -> bool {
        let w = self.work.lock();
        w.idle == 0 && w.workers >= self.config.max_workers.max(1)
    }

    /// A caller inside one of our handlers whose wait needs a handler run
    /// that no worker can take: it would wait for itself.
    pub(super) fn check_would_deadlock(&self) -> Result<(), CallError> {
        if IN_HANDLER_OF.with(|h| h.get()) != self.id() {
            return Ok(());
        }
        let w = self.work.lock();
        if !w.queue.is_empty() && w.idle == 0 && w.busy >= self.config.max_workers.max(1) {
            return Err(CallError::WouldDeadlock(
                "every worker of this connection is inside a handler (this one included) and the \
                 peer's next call cannot run; raise EndpointConfig::max_workers, or answer through \
                 the Responder later instead of waiting inside the handler",
            ));
        }
        Ok(())
    }
}
