//! The lead: the one thread at a time that reads the transport, and how
//! it routes what it reads (results complete slots, calls go to workers,
//! a `Hangup` ends the connection); sending with the engine's `on_wait`
//! hook.

use super::*;

impl Inner {
    pub(super) fn try_lead(&self, who: u32) -> bool {
        // SYNC POINT: lead. Acquire pairs with the Release in
        // `release_lead`: the previous leader's reads of the transport
        // happened before ours.
        self.lead
            .compare_exchange(FREE, who, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    #[inline]
    pub(super) fn release_lead(&self) {
        // SYNC POINT: lead (Release half, see `try_lead`).
        self.lead.store(FREE, Ordering::Release);
        // SYNC POINT: follower hand-over. A follower announces itself, then
        // re-checks the lead; we free the lead, then check for followers.
        // The two SeqCst fences are totally ordered, so one of us sees the
        // other: it does not park, or we unpark it. (Fences, not SeqCst
        // accesses: loom models fences exactly, and costs are the same.)
        fence(Ordering::SeqCst);
        if self.follower_count.load(Ordering::Relaxed) > 0 {
            self.unpark_followers();
        }
    }

    #[cold]
    fn unpark_followers(&self) {
        for t in self.followers.lock().iter() {
            t.unpark();
        }
    }

    /// Reads and routes messages while leading, a batch at a time (see
    /// [`Transport::recv_batch`]). A caller (`own` is its call) stops once
    /// its result is in (after the rest of the batch it came in, at most
    /// [`DRAIN_BATCH`] messages: the waits behind a pipelined call then
    /// find their results done without leading at all) or `deadline`
    /// passes. A worker stops once it has read calls to run (up to
    /// [`batch::BATCH`], into the cells of its batch `cells`, counted in
    /// `turn.read`) or
    /// when a caller wants the lead.
    ///
    /// `mine`, a caller's, is offered every plain result first (with its
    /// sequence number): it takes the payload of a call it owns and says
    /// so, and the result then skips the pending slot (see
    /// [`PendingTable::release_own`]); a turn whose `own` call was taken so
    /// ends like one whose call is done.
    ///
    /// What the turn produced is written into `turn`, a fresh `Turn` of
    /// the caller's (not returned: see `worker_loop`).
    pub(super) fn lead_turn<M>(
        self: &Arc<Self>,
        own: Option<u64>,
        deadline: Option<Instant>,
        cells: Option<&batch::Batch>,
        mut mine: Option<&mut M>,
        turn: &mut Turn,
    ) where
        M: FnMut(u64, &mut WrapperFunctionBuffer) -> bool + ?Sized,
    {
        // Every message of the turn lands here, in place (see
        // `Transport::recv_into`); routing takes its payload out.
        let mut msg = Message::new(Opcode::Result, 0, 0, WrapperFunctionBuffer::new());
        let worker = own.is_none();
        let max = if worker { WORKER_BATCH + 1 } else { DRAIN_BATCH };
        loop {
            match own {
                _ if turn.own_taken => return,
                Some(seq) if self.pending.is_done(seq) => return,
                None if self.callers.load(Ordering::Relaxed) > 0 => return,
                _ => {}
            }
            let arrival = self.transport.recv_batch(deadline, max, &mut msg, &mut |m| {
                if let Some(mine) = mine.as_mut() {
                    if m.opcode == Opcode::Result
                        && self.is_plain_result(m.tag)
                        && mine(m.seq, &mut m.payload)
                    {
                        turn.own_taken |= own == Some(m.seq);
                        return true;
                    }
                }
                self.route(m, cells, turn);
                let read_calls = turn.read >= batch::BATCH;
                !(read_calls || turn.disconnect.is_some() || turn.saw_call)
            });
            match arrival {
                Ok(Arrival::Message) => {
                    if turn.read > 0 || turn.disconnect.is_some() || turn.saw_call {
                        return;
                    }
                }
                Ok(Arrival::TimedOut) | Ok(Arrival::Interrupted) => return,
                Err(e) => {
                    self.reading_failed(e, turn);
                    return;
                }
            }
        }
    }

    /// The transport reported a terminal error while we led.
    fn reading_failed(&self, e: TransportError, turn: &mut Turn) {
        // SYNC POINT: reading dead. Pairs with the Acquire loads before
        // every try to lead.
        self.rx_dead.store(true, Ordering::Release);
        self.note_stream_ended();
        turn.disconnect = Some(DisconnectReason::from_transport(e));
    }

    /// Whether a result of kind `tag` carries the handler's bytes as they
    /// are (not an error to rebuild).
    fn is_plain_result(&self, tag: u64) -> bool {
        // LLVM sends every result under tag 0 (`outcome_of` checks it).
        tag == if self.dialect.is_llvm() { 0 } else { RESULT_OK }
    }

    /// The outcome a `Result` message carries (its payload is taken out
    /// of `msg`), or why it is malformed.
    pub(super) fn outcome_of(
        &self,
        msg: &mut Message,
    ) -> Result<(u64, WrapperFunctionBuffer), String> {
        if self.dialect.is_llvm() {
            // LLVM sends every result, errors included, under tag 0.
            return match msg.tag {
                0 => Ok((msg.seq, std::mem::take(&mut msg.payload))),
                other => Err(format!(
                    "result for sequence number {} has tag {other}; LLVM's protocol sends results with tag 0",
                    msg.seq
                )),
            };
        }
        match msg.tag {
            RESULT_OK => Ok((msg.seq, std::mem::take(&mut msg.payload))),
            RESULT_ERROR => Ok((
                msg.seq,
                WrapperFunctionBuffer::out_of_band_error(
                    String::from_utf8_lossy(msg.payload.as_slice()).into_owned(),
                ),
            )),
            other => Err(format!(
                "result for sequence number {} has unknown kind {other}",
                msg.seq
            )),
        }
    }

    /// Routes one message (taking its payload out). Never blocks. A call
    /// read by a worker goes into the next cell of its batch (`cells`).
    pub(super) fn route(
        self: &Arc<Self>,
        msg: &mut Message,
        cells: Option<&batch::Batch>,
        turn: &mut Turn,
    ) {
        match msg.opcode {
            Opcode::Result => match self.outcome_of(msg) {
                Ok((seq, outcome)) => {
                    if let Err(e) = self.pending.complete(seq, Ok(outcome)) {
                        self.protocol_error(e.to_string(), turn);
                    }
                }
                Err(what) => self.protocol_error(what, turn),
            },
            Opcode::CallWrapper => {
                if self.gate.is_closed() {
                    return; // Disconnecting: the peer fails this call.
                }
                let call = Incoming {
                    seq: msg.seq,
                    tag: msg.tag,
                    args: std::mem::take(&mut msg.payload),
                };
                if let Some(b) = cells {
                    b.put_call(turn.read, call);
                    turn.read += 1;
                    return;
                }
                turn.saw_call = true;
                let mut w = self.work.lock();
                if !self.enqueue(&mut w, call) {
                    drop(w);
                    self.protocol_error(
                        "the peer keeps sending calls while it does not read their results".into(),
                        turn,
                    );
                }
            }
            Opcode::Hangup => match sps::decode_error(msg.payload.as_slice()) {
                Ok(_) => {
                    self.note_peer_gone();
                    turn.disconnect = Some(DisconnectReason::PeerHungUp);
                }
                Err(e) => self.protocol_error(format!("the peer's Hangup is malformed: {e}"), turn),
            },
            Opcode::Setup => self.protocol_error(
                "a second Setup message arrived after the connection was set up".into(),
                turn,
            ),
        }
    }

    pub(super) fn protocol_error(&self, what: String, turn: &mut Turn) {
        // The peer cannot be trusted to acknowledge anything any more.
        self.note_peer_gone();
        self.transport.close();
        turn.disconnect = Some(DisconnectReason::Protocol(what));
    }

    pub(super) fn note_peer_gone(&self) {
        let mut c = self.conn.lock();
        c.peer_gone = true;
        self.conn_cv.notify_all();
    }

    /// Reading ended for good (end of stream, death, broken transport):
    /// the peer is gone and nothing more may be sent.
    pub(super) fn note_stream_ended(&self) {
        let mut c = self.conn.lock();
        c.peer_gone = true;
        c.stream_ended = true;
        self.conn_cv.notify_all();
    }

    pub(super) fn peer_gone(&self) -> bool {
        self.conn.lock().peer_gone
    }

    /// A send found the transport ended (the peer hung up or died, or it
    /// broke the protocol): start the disconnect with that reason now,
    /// rather than when the reader next looks, so the reason the user sees
    /// is the cause and not a later local `disconnect()`.
    pub(super) fn transport_ended(self: &Arc<Self>, e: TransportError) {
        let mut w = self.work.lock();
        w.disconnect
            .get_or_insert(DisconnectReason::from_transport(e));
        self.wake_or_spawn(&mut w);
    }

    /// The `on_wait` hook of every send: the sender is about to sleep for
    /// room, so make sure somebody reads meanwhile.
    pub(super) fn ensure_reader(self: &Arc<Self>) {
        if self.lead.load(Ordering::Acquire) != FREE || self.callers.load(Ordering::Relaxed) > 0 {
            return; // someone leads, or a caller is about to
        }
        self.wake_or_spawn(&mut self.work.lock());
    }

    /// Sends on the transport with the engine's hook.
    pub(super) fn send(
        self: &Arc<Self>,
        opcode: Opcode,
        seq: u64,
        tag: u64,
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), TransportError> {
        self.transport
            .send_until(opcode, seq, tag, payload, deadline, &|| {
                self.ensure_reader()
            })
    }
}
