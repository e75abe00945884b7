//! The disconnect protocol (steps in the [`endpoint`](crate::endpoint)
//! docs): one doer, bounded waits, workers joined.

use super::*;

impl Inner {
    /// The error a call gets when the connection is (being) closed.
    pub(crate) fn closed_error(&self) -> CallError {
        let c = self.conn.lock();
        if self.transport.peer_died() || c.reason == Some(DisconnectReason::PeerDied) {
            CallError::PeerDied
        } else {
            CallError::Disconnected
        }
    }

    /// Takes the lead for step 5 once the transport is closed: whoever
    /// leads then ends its turn at once (its `recv` fails), and whoever
    /// leads after it only finds the transport closed. Gives up at
    /// `deadline` (`false`), which only a thread that keeps the lead while
    /// it disconnects could cause (a waker run by a completing lead that
    /// calls `disconnect` itself): `fail_all` then runs beside that lead,
    /// so a result the lead reads for a caller's own call may still free
    /// the slot after a claim here; the call ends once either way, the
    /// slot keeps the outcome nobody takes, and the connection is gone.
    fn lead_for_failing(&self, deadline: Instant) -> bool {
        loop {
            if self.try_lead(CALLER) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // `release_lead` unparks us.
            self.as_follower(|| {
                if self.lead.load(Ordering::Relaxed) != FREE {
                    park_until(Some(deadline.min(Instant::now() + LOOK_AGAIN)));
                }
            });
        }
    }

    pub(crate) fn reason(&self) -> Option<DisconnectReason> {
        self.conn.lock().reason.clone()
    }

    pub(crate) fn is_disconnected(&self) -> bool {
        self.conn.lock().phase == Phase::Disconnected
    }

    pub(crate) fn add_disconnect_callback(&self, cb: DisconnectCallback) {
        let mut cbs = self.on_disconnect.lock();
        // Checked under the callback lock: step 6 takes the same lock to
        // drain, so a callback is either drained there or run here.
        if self.is_disconnected() {
            drop(cbs);
            let reason = self.reason().unwrap_or(DisconnectReason::Local);
            cb(&reason);
        } else {
            cbs.push(cb);
        }
    }

    /// The disconnect protocol; see the module docs. Returns once the
    /// connection is disconnected.
    pub(crate) fn disconnect(self: &Arc<Self>, reason: DisconnectReason) {
        self.disconnect_with(reason, true);
    }

    /// As [`disconnect`](Self::disconnect); when another thread is already
    /// doing the protocol, waits for it to finish only if `wait_for_doer`.
    pub(super) fn disconnect_with(self: &Arc<Self>, reason: DisconnectReason, wait_for_doer: bool) {
        let first = self.gate.close();
        {
            let mut c = self.conn.lock();
            if c.reason.is_none() {
                c.reason = Some(reason);
            }
            if first {
                c.phase = Phase::Disconnecting;
            }
        }
        if !first {
            if !wait_for_doer {
                return;
            }
            let mut c = self.conn.lock();
            while c.phase != Phase::Disconnected {
                c = self.conn_cv.wait(c);
            }
            drop(c);
            // The doer may have been a worker (it read the peer's Hangup):
            // it could not wait for itself, so wait for it here.
            self.wait_for_idle_workers_to_exit();
            return;
        }
        // Step 2: queued calls are dropped unrun (their responders answer
        // into a closed gate: nothing is sent, the peer's calls fail when
        // the connection ends); sends in flight finish or are made to fail.
        let dropped = {
            let mut w = self.work.lock();
            w.refusals.clear();
            // Calls of running batches too (their results go nowhere).
            let mut results = Vec::new();
            self.steal_batches(&mut w, true, &mut results);
            (std::mem::take(&mut w.queue), results)
        };
        drop(dropped);
        let deadline = Instant::now() + self.config.hangup_timeout;
        if !self.gate.wait_idle_until(deadline) {
            self.transport.close();
            // Closing fails every blocked send; they leave at once.
            self.gate
                .wait_idle_until(Instant::now() + self.config.hangup_timeout);
        }
        // Step 3: tell the peer (request or acknowledgement), bounded,
        // unless its end is already closed. The payload is an SPS `Error`,
        // as LLVM's programs expect: success, or why we end the session.
        if !self.conn.lock().stream_ended {
            let why = match self.reason() {
                Some(DisconnectReason::Protocol(what)) => Some(what),
                _ => None,
            };
            let payload = sps::encode_error(why.as_deref());
            let _ = self
                .transport
                .send_until(Opcode::Hangup, 0, 0, &payload, Some(deadline), &|| {});
        }
        // Step 4: wait for the peer's answer if we asked first. Results
        // already on their way are still delivered meanwhile.
        if !self.peer_gone() {
            self.drain_until_peer_gone(deadline);
        }
        // Step 5. Calls are failed while this thread leads: an owner that
        // reads its own result frees its slot without a read-modify-write,
        // which is sound only if no completer claims it meanwhile, and
        // every other completer leads (`PendingTable::release_own`).
        self.transport.close();
        let err = self.closed_error();
        // Only pipelines free slots so (SYNC POINT: pipelined, see
        // `Endpoint::pipeline`: the gate was closed and idle before this
        // load).
        let led = self.pipelined.load(Ordering::SeqCst)
            && self.lead_for_failing(Instant::now() + self.config.hangup_timeout);
        if !crate::sync::is_broken("engine") {
            // Loom must-fail variant: leave pending calls waiting.
            self.pending.fail_all(err);
        }
        if led {
            self.release_lead();
        }
        // Step 6.
        {
            let mut w = self.work.lock();
            w.stop = true;
            self.work_cv.notify_all();
        }
        // Workers in `recv` were woken by the close in step 5, and every
        // waiting caller by its slot's waker in `fail_all`.
        self.wait_for_idle_workers_to_exit();
        // Remote handles: every export released (its release action run),
        // every imported handle dead, before anyone sees the connection
        // disconnected.
        self.handles.disconnected();
        let callbacks = {
            let mut cbs = self.on_disconnect.lock();
            {
                let mut c = self.conn.lock();
                c.phase = Phase::Disconnected;
                self.conn_cv.notify_all();
            }
            std::mem::take(&mut *cbs)
        };
        let reason = self.reason().unwrap_or(DisconnectReason::Local);
        for cb in callbacks {
            cb(&reason);
        }
    }

    /// Step 6: waits (bounded by `hangup_timeout`) until every worker has
    /// left its loop but those inside a handler and this thread itself,
    /// then joins those, so that no idle worker thread outlives the
    /// disconnect. Workers in a handler get [`BUSY_GRACE`] to finish and
    /// leave too (one that has just answered is still "in" its handler
    /// while it returns: its caller may already be disconnecting); after
    /// that they finish on their own.
    pub(super) fn wait_for_idle_workers_to_exit(&self) {
        // This thread, if it is one of our workers: idle (in its loop), or
        // in a handler (then counted in `busy`).
        let in_handler = usize::from(IN_HANDLER_OF.with(|c| c.get()) == self.id());
        let me = usize::from(IDLE_WORKER_OF.with(|c| c.get()) == self.id()) + in_handler;
        let start = Instant::now();
        let deadline = start + self.config.hangup_timeout;
        let grace_end = start + BUSY_GRACE.min(self.config.hangup_timeout);
        let exited = {
            let mut exited = self.exits.threads.lock();
            loop {
                // Read afresh on every wake: a worker whose handler just
                // returned stops being busy, then exits and wakes us. (Lock
                // order: exits, then work; workers never hold both.)
                let (all, idle) = {
                    let w = self.work.lock();
                    let all = w.spawned.saturating_sub(me);
                    (all, all.saturating_sub(w.busy.saturating_sub(in_handler)))
                };
                let now = Instant::now();
                if exited.len() >= all || (exited.len() >= idle && now >= grace_end) {
                    break;
                }
                let until = if exited.len() >= idle {
                    grace_end // only busy workers left: wait for them briefly
                } else {
                    deadline
                };
                let left = until.saturating_duration_since(now);
                if left.is_zero() {
                    break; // a worker is stuck somewhere; do not hang on it
                }
                exited = wait_cv(&self.exits.cv, exited, Some(left));
            }
            exited.clone()
        };
        let done: Vec<_> = {
            let mut w = self.work.lock();
            let (done, running) = std::mem::take(&mut w.handles)
                .into_iter()
                .partition(|h| exited.contains(&h.thread().id()));
            w.handles = running;
            done
        };
        for handle in done {
            // It left its loop: this waits only for its teardown. An Err
            // would mean it panicked after that, which nothing there does.
            let _ = handle.join();
        }
    }

    /// Step 4: reads (as the lead, taken from whoever has it) until the
    /// peer's `Hangup`, end of stream or death, or `deadline`.
    pub(super) fn drain_until_peer_gone(self: &Arc<Self>, deadline: Instant) {
        while !self.peer_gone() && Instant::now() < deadline {
            if !self.try_lead(CALLER) {
                // Whoever leads routes the peer's Hangup (or sees the end
                // of the stream) and signals `conn_cv`; look again shortly
                // in case that leader leaves without reading it.
                let c = self.conn.lock();
                if !c.peer_gone {
                    let left = deadline.saturating_duration_since(Instant::now());
                    drop(wait_cv(&self.conn_cv, c, Some(left.min(HANDOVER))));
                }
                continue;
            }
            loop {
                match self.transport.recv(Some(deadline)) {
                    Ok(Received::Message(mut m)) => match m.opcode {
                        Opcode::Result => {
                            if let Ok((seq, outcome)) = self.outcome_of(&mut m) {
                                let _ = self.pending.complete(seq, Ok(outcome));
                            }
                        }
                        Opcode::Hangup => {
                            self.note_peer_gone();
                            break;
                        }
                        _ => {}
                    },
                    Ok(Received::Interrupted) => continue,
                    Ok(Received::TimedOut) => break,
                    Err(_) => {
                        self.note_stream_ended();
                        break;
                    }
                }
            }
            self.release_lead();
        }
    }
}
