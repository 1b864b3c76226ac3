//! TCP state of a pinned flow, as far as a load balancer needs it: has the
//! client completed the handshake (conntrack's ASSURED), has the flow ended,
//! and will a RST's receiver accept it. [`advance`] is the one writer of a
//! flow's state, for both directions; [`phase`] is the one reading of it,
//! which housekeeping, `ctl status` and `ctl flows` share.
//!
//! # Embryonic flows
//! A SYN pins a flow, but only the client's ACK of the backend's SYN-ACK
//! makes it a connection ([`ESTABLISHED`]). Until then the flow is
//! embryonic: it expires after the short `syn` timeout, only the client's
//! packets keep it alive, and it is neither an open flow nor a new
//! connection. A spoofed SYN never gets further, because its source never
//! sees the SYN-ACK it would have to acknowledge.
//!
//! # RST validation
//! Each side's sequence state ([`SeqState`]) holds the end of the furthest
//! segment it sent (its `SND.NXT` as the LB saw it) and the furthest
//! acknowledgment it sent (its `RCV.NXT` as it last announced it). A Linux
//! receiver accepts a RST only at exactly its `RCV.NXT` (RFC 5961), which
//! lies between what it last acknowledged and what the sender sent. The LB
//! accepts exactly that span: for a connection with nothing in flight it is
//! a single number, the one the endpoint accepts. A genuine RST lands in it
//! (a stack's RST carries its `SND.NXT`; a stateless RST echoes the
//! acknowledgment of the segment it answers), while a forged RST with a
//! guessed sequence number, even one inside the receiver's window (which
//! the receiver answers with a challenge ACK), almost never does. Anything
//! else is forwarded for the endpoint to judge, and the flow stays as it
//! was. Before the backend answered, the client is in SYN-SENT and accepts
//! a RST that acknowledges its SYN, whatever its sequence number: the
//! backend refusing the connection.
//!
//! A segment moves its side's state only if it is plausible: it starts at
//! most [`MAX_SEQ_JUMP`] beyond the side's known end, and an acknowledgment
//! never goes beyond what the other side sent. A blind attacker therefore
//! has to guess within that span to move the state, as with conntrack's
//! window checks.
//!
//! # Who closed first
//! A backend that closes first (or at the same time as its client) keeps
//! the connection's 4-tuple, (backend, SNAT address:port), in TIME_WAIT
//! for a minute, and accepts a new SYN on it only by Linux's rules. The
//! flow records that ([`BACKEND_CLOSED_FIRST`], set when the backend's
//! first FIN does not acknowledge a client FIN), and from then on the
//! newest TCP timestamp of the client's segments ([`note_client_timestamp`]),
//! which with the end of the client's FIN is what those rules read
//! (`crate::port_reuse`). A backend that closes second ends in LAST_ACK,
//! gone once the client's last ACK reaches it.
//!
//! # SYN-proxied flows
//! A flow the SYN proxy opened (`crate::syn_proxy`) is tracked the same
//! way, in one numbering: the client's. The data plane translates its
//! backend's sequence numbers back by the flow's `seq_delta` before it
//! calls [`advance`], opens the flow as the client's SYN would have, and
//! takes the backend's SYN-ACK and the ACK the LB sends in the client's
//! place through [`advance`] too: that ACK establishes the flow.

use crate::maps::{FlowOf, SeqState, WireAddr};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The client's SYN was seen (flow created by a handshake).
pub const SYN_SEEN: u32 = 1 << 0;
/// The client acknowledged the backend's SYN-ACK: a real connection.
pub const ESTABLISHED: u32 = 1 << 1;
pub const FIN_FROM_CLIENT: u32 = 1 << 2;
pub const FIN_FROM_BACKEND: u32 = 1 << 3;
/// A RST that its receiver accepts went through.
pub const RESET: u32 = 1 << 4;
/// The backend answered the SYN (its SYN-ACK went through).
pub const SYN_ACK_SEEN: u32 = 1 << 5;
/// The backend's FIN did not acknowledge a FIN of the client: it closed
/// first (or both closed at once), so it holds the connection in TIME_WAIT.
pub const BACKEND_CLOSED_FIRST: u32 = 1 << 6;
/// The client's segments since the backend closed first carry TCP
/// timestamps; `Flow::client_tsval` holds the newest.
pub const CLIENT_TIMESTAMPS: u32 = 1 << 7;
/// The flow's SYN replaced an ended flow of its 5-tuple whose backend may
/// still hold TIME_WAIT on that flow's SNAT pair ([`inherited_by_reconnection`]).
/// That pair's reverse entry still names the 5-tuple, and while this flow
/// is in the table the take-over rule leaves the pair alone until
/// TIME_WAIT is surely over (`crate::port_reuse::guards_time_wait`); gone,
/// the pair would look free. The sweep therefore keeps the flow that long.
pub const GUARDS_TIME_WAIT: u32 = 1 << 8;

/// How far beyond a side's known end a segment may start and still move
/// it. A TCP sender's segments reach the LB in order unless some were lost
/// before it; this bounds that gap (a larger one pauses tracking until the
/// retransmissions fill it) and what a blind forger can move.
pub const MAX_SEQ_JUMP: u32 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    FromClient,
    FromBackend,
}

/// What [`advance`] reads of a TCP segment; numbers in host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub payload_len: u32,
}

impl Segment {
    /// The sequence number after this segment: SYN and FIN count as one.
    #[inline(always)]
    pub const fn end(&self) -> u32 {
        self.seq
            .wrapping_add(self.payload_len)
            .wrapping_add((self.flags & TCP_SYN != 0) as u32)
            .wrapping_add((self.flags & TCP_FIN != 0) as u32)
    }
}

/// A SYN without ACK, FIN or RST opens a new connection.
#[inline(always)]
pub const fn is_connection_request(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) == TCP_SYN
}

/// SYN with FIN or RST: no TCP stack sends it, scanners and floods do.
#[inline(always)]
pub const fn has_bad_flags(tcp_flags: u8) -> bool {
    tcp_flags & TCP_SYN != 0 && tcp_flags & (TCP_FIN | TCP_RST) != 0
}

/// What a segment did to its flow, for the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    None,
    /// The client's ACK completed the handshake: a new connection.
    Established,
    /// The backend answered the SYN (its first SYN-ACK).
    Handshake,
    /// The backend refused the connection: a RST before the handshake
    /// completed.
    Refused,
    /// The backend reset an established connection.
    Reset,
    /// A RST outside the window its receiver accepts: forwarded, and the
    /// flow left as it was.
    RstOutOfWindow,
}

/// `a` comes after `b` in sequence space.
#[inline(always)]
pub const fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// `x` lies in `lo..=hi` in sequence space; an inverted span holds its
/// ends only.
#[inline(always)]
const fn within(x: u32, lo: u32, hi: u32) -> bool {
    x == lo || x == hi || (!after(lo, hi) && after(x, lo) && after(hi, x))
}

/// State bits and both sides' sequence state of a flow the client's SYN
/// opens. Until the backend speaks, its acknowledgment is the one it owes:
/// the SYN's.
#[inline(always)]
pub const fn opened_by(syn: &Segment) -> (u32, SeqState, SeqState) {
    let end = syn.end();
    (SYN_SEEN, SeqState { end, ack: 0 }, SeqState { end: 0, ack: end })
}

/// The state bits a new connection's flow takes from the ended flow of its
/// 5-tuple that it replaces (`ended`, its state), `same_pair` if it took
/// that flow's SNAT pair over: [`GUARDS_TIME_WAIT`] if it left that pair
/// while its backend may hold TIME_WAIT there (it closed first), or if the
/// ended flow guarded an older pair itself (the guard passes on).
#[inline(always)]
pub const fn inherited_by_reconnection(ended: u32, same_pair: bool) -> u32 {
    if ended & GUARDS_TIME_WAIT != 0 || (ended & BACKEND_CLOSED_FIRST != 0 && !same_pair) {
        GUARDS_TIME_WAIT
    } else {
        0
    }
}

/// Whether a flow can be pinned again from a client segment without one
/// (its entry was evicted but its reverse-NAT entry still names it): it
/// must be mid-stream, acknowledging the backend, and not a RST.
#[inline(always)]
pub const fn can_readopt(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_ACK | TCP_SYN | TCP_RST) == TCP_ACK
}

/// State bits and sequence state of a flow pinned again from `seg` (see
/// [`can_readopt`]): established, each side where the segment shows it.
#[inline(always)]
pub const fn readopted_by(seg: &Segment) -> (u32, SeqState, SeqState) {
    (
        ESTABLISHED | SYN_ACK_SEEN,
        SeqState {
            end: seg.end(),
            ack: seg.ack,
        },
        SeqState {
            end: seg.ack,
            ack: seg.seq,
        },
    )
}

/// Takes `seg`, sent in `dir`, into `flow`'s state and sequence state, and
/// says what it meant.
#[inline(always)]
pub fn advance<A: WireAddr>(flow: &mut FlowOf<A>, dir: Direction, seg: &Segment) -> Event {
    let state = flow.state;
    let (sender, receiver, fin) = match dir {
        Direction::FromClient => (&mut flow.client, &mut flow.backend, FIN_FROM_CLIENT),
        Direction::FromBackend => (&mut flow.backend, &mut flow.client, FIN_FROM_BACKEND),
    };
    if seg.flags & TCP_RST != 0 {
        if state & RESET != 0 {
            return Event::None; // a straggler: the flow has ended already
        }
        if !rst_acceptable(state, dir, seg, sender, receiver) {
            return Event::RstOutOfWindow;
        }
        flow.state = state | RESET;
        return match dir {
            Direction::FromClient => Event::None,
            Direction::FromBackend if state & ESTABLISHED != 0 => Event::Reset,
            Direction::FromBackend => Event::Refused,
        };
    }
    if dir == Direction::FromBackend && seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        if state & SYN_ACK_SEEN != 0 {
            return Event::None; // a retransmission
        }
        sender.end = seg.end();
        sender.ack = seg.ack;
        // The acknowledgment the client's ACK must carry.
        receiver.ack = sender.end;
        flow.state = state | SYN_ACK_SEEN;
        return Event::Handshake;
    }
    let mut next = state;
    let mut event = Event::None;
    if dir == Direction::FromClient
        && state & (SYN_ACK_SEEN | ESTABLISHED) == SYN_ACK_SEEN
        && seg.flags & (TCP_SYN | TCP_ACK) == TCP_ACK
        && within(seg.ack, sender.ack, receiver.end)
    {
        next |= ESTABLISHED;
        event = Event::Established;
    }
    let end = seg.end();
    let plausible = !after(seg.seq, sender.end.wrapping_add(MAX_SEQ_JUMP));
    if plausible && after(end, sender.end) {
        sender.end = end;
    }
    if seg.flags & TCP_ACK != 0 && after(seg.ack, sender.ack) && !after(seg.ack, receiver.end) {
        sender.ack = seg.ack;
    }
    // A FIN counts where it closes the stream: at the end tracked (first
    // sight or a retransmission), not behind it.
    if seg.flags & TCP_FIN != 0 && plausible && !after(sender.end, end) {
        next |= fin;
        // A backend that closes after the client acknowledges the client's
        // FIN with its own (it goes LAST_ACK, then CLOSED); one that does
        // not closed actively and will hold TIME_WAIT.
        let acks_client_fin = state & FIN_FROM_CLIENT != 0 && seg.flags & TCP_ACK != 0 && !after(receiver.end, seg.ack);
        if dir == Direction::FromBackend && state & FIN_FROM_BACKEND == 0 && !acks_client_fin {
            next |= BACKEND_CLOSED_FIRST;
        }
    }
    flow.state = next;
    event
}

/// Whether [`note_client_timestamp`] wants the client's segments' TCP
/// timestamps: only once the backend closed first, so the option is never
/// parsed on an established flow's packets.
#[inline(always)]
pub const fn wants_client_timestamp(state: u32) -> bool {
    state & BACKEND_CLOSED_FIRST != 0
}

/// Takes the TSval of a client segment (`None`: it has no timestamp
/// option) into the record of the backend's TIME_WAIT: Linux's TIME_WAIT
/// keeps the newest TSval the client sent as its `ts_recent`. The record
/// only ever grows, so a forged segment can make it stricter, never laxer.
#[inline(always)]
pub fn note_client_timestamp<A: WireAddr>(flow: &mut FlowOf<A>, tsval: Option<u32>) {
    let Some(tsval) = tsval else {
        return;
    };
    if flow.state & CLIENT_TIMESTAMPS == 0 || after(tsval, flow.client_tsval) {
        flow.client_tsval = tsval;
        flow.state |= CLIENT_TIMESTAMPS;
    }
}

/// See the module docs.
#[inline(always)]
const fn rst_acceptable(state: u32, dir: Direction, seg: &Segment, sender: &SeqState, receiver: &SeqState) -> bool {
    if state & SYN_ACK_SEEN == 0 && matches!(dir, Direction::FromBackend) {
        return seg.flags & TCP_ACK != 0 && seg.ack == receiver.end;
    }
    within(seg.seq, receiver.ack, sender.end)
}

/// Whether the backend may have sent `seg` on this flow. Before its
/// SYN-ACK it answers the client's SYN and nothing else: a SYN-ACK or a RST
/// acknowledging exactly that SYN, or a bare ACK. A bare ACK is what an
/// older connection's state on the same 4-tuple answers a SYN with (or its
/// last ACK, when this flow took its port over); the client answers it
/// with a RST at exactly that state's next sequence number, which clears
/// it (RFC 9293's old-duplicate rule), and retries. Dropping it would leave
/// the client retrying into that state until it expires. Anything else,
/// data or a FIN, comes from an older connection on the same (backend,
/// SNAT port) and must not reach this client.
#[inline(always)]
pub const fn backend_may_send<A: WireAddr>(flow: &FlowOf<A>, seg: &Segment) -> bool {
    if flow.state & SYN_ACK_SEEN != 0 {
        return true;
    }
    seg.payload_len == 0
        && seg.flags & (TCP_FIN | TCP_ACK) == TCP_ACK
        && (seg.flags & (TCP_SYN | TCP_RST) == 0 || seg.ack == flow.client.end)
}

/// Whether a backend's packet keeps the flow alive. An embryonic flow ages
/// by its client's packets alone, whatever the backend answered (a SYN-ACK
/// retransmitted to a spoofed source must not keep it).
#[inline(always)]
pub const fn backend_keeps_alive(state: u32) -> bool {
    state & ESTABLISHED != 0
}

/// Ended flows only linger until housekeeping removes them, and a new SYN on
/// the same 5-tuple is a new connection.
#[inline(always)]
pub const fn has_ended(state: u32) -> bool {
    state & RESET != 0 || state & (FIN_FROM_CLIENT | FIN_FROM_BACKEND) == FIN_FROM_CLIENT | FIN_FROM_BACKEND
}

/// Where a flow is in its life, as its state bits say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowPhase {
    /// The client has not completed the handshake: a connection attempt,
    /// or a spoofed SYN that never will.
    Embryonic,
    Established,
    /// One side sent a FIN; the other may still send.
    Closing,
    /// FIN both ways or a RST: lingers only for stragglers.
    Closed,
}

impl FlowPhase {
    /// A connection that has not ended: what a drain waits for.
    pub const fn is_open(self) -> bool {
        matches!(self, FlowPhase::Established | FlowPhase::Closing)
    }

    /// How `ctl flows` names it.
    pub const fn name(self) -> &'static str {
        match self {
            FlowPhase::Embryonic => "embryonic",
            FlowPhase::Established => "established",
            FlowPhase::Closing => "closing",
            FlowPhase::Closed => "closed",
        }
    }
}

pub const fn phase(state: u32) -> FlowPhase {
    if has_ended(state) {
        FlowPhase::Closed
    } else if state & ESTABLISHED == 0 {
        FlowPhase::Embryonic
    } else if state & (FIN_FROM_CLIENT | FIN_FROM_BACKEND) != 0 {
        FlowPhase::Closing
    } else {
        FlowPhase::Established
    }
}

#[cfg(test)]
mod tests;
