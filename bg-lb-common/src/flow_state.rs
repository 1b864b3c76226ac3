//! TCP state of a pinned flow, as far as a load balancer needs it: when has
//! the flow ended, so a new SYN on the same 5-tuple may pick a new backend and
//! housekeeping may expire it after a short linger. [`phase`] is the one
//! reading of the state bits that housekeeping and `ctl flows` share.

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The client's SYN was seen (flow created by a handshake).
pub const SYN_SEEN: u32 = 1 << 0;
/// The backend answered (SYN-ACK seen on the reply path).
pub const ESTABLISHED: u32 = 1 << 1;
pub const FIN_FROM_CLIENT: u32 = 1 << 2;
pub const FIN_FROM_BACKEND: u32 = 1 << 3;
pub const RESET: u32 = 1 << 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    FromClient,
    FromBackend,
}

/// A SYN without ACK opens a new connection.
#[inline(always)]
pub const fn is_connection_request(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// State after a packet with `tcp_flags` went through in `dir`.
#[inline(always)]
pub const fn advance(state: u32, tcp_flags: u8, dir: Direction) -> u32 {
    let mut next = state;
    if tcp_flags & TCP_RST != 0 {
        next |= RESET;
    }
    match dir {
        Direction::FromClient => {
            if tcp_flags & TCP_FIN != 0 {
                next |= FIN_FROM_CLIENT;
            }
        }
        Direction::FromBackend => {
            if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
                next |= ESTABLISHED;
            }
            if tcp_flags & TCP_FIN != 0 {
                next |= FIN_FROM_BACKEND;
            }
        }
    }
    next
}

/// What a backend's reply tells about its connection, before the state
/// absorbs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendSignal {
    None,
    Handshake,
    Refused,
    Reset,
}

/// Classifies a backend -> client packet given the flow's state before it.
#[inline(always)]
pub const fn backend_signal(state: u32, tcp_flags: u8) -> BackendSignal {
    let established = state & ESTABLISHED != 0;
    if tcp_flags & TCP_RST != 0 {
        if state & RESET != 0 {
            BackendSignal::None // already counted
        } else if established {
            BackendSignal::Reset
        } else {
            BackendSignal::Refused
        }
    } else if !established && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        BackendSignal::Handshake
    } else {
        BackendSignal::None
    }
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
    /// The backend has not answered the handshake (or the flow was adopted
    /// from a mid-stream packet, so its SYN-ACK was never seen).
    SynSent,
    Established,
    /// One side sent a FIN; the other may still send. `established` says
    /// whether the backend ever answered the handshake, which decides how
    /// long the flow may stay idle.
    Closing {
        established: bool,
    },
    /// FIN both ways or a RST: lingers only for stragglers.
    Closed,
}

impl FlowPhase {
    /// Not closed: what a drain waits for.
    pub const fn is_open(self) -> bool {
        !matches!(self, FlowPhase::Closed)
    }

    /// How `ctl flows` names it.
    pub const fn name(self) -> &'static str {
        match self {
            FlowPhase::SynSent => "syn-sent",
            FlowPhase::Established => "established",
            FlowPhase::Closing { .. } => "closing",
            FlowPhase::Closed => "closed",
        }
    }
}

pub const fn phase(state: u32) -> FlowPhase {
    let established = state & ESTABLISHED != 0;
    if has_ended(state) {
        FlowPhase::Closed
    } else if state & (FIN_FROM_CLIENT | FIN_FROM_BACKEND) != 0 {
        FlowPhase::Closing { established }
    } else if established {
        FlowPhase::Established
    } else {
        FlowPhase::SynSent
    }
}

/// Bits a fresh flow starts with: a SYN-created flow, or a flow adopted from
/// a mid-stream packet.
#[inline(always)]
pub const fn initial(tcp_flags: u8) -> u32 {
    if is_connection_request(tcp_flags) { SYN_SEEN } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::{Direction::*, *};

    #[test]
    fn syn_without_ack_is_a_connection_request_and_syn_ack_is_not() {
        assert!(is_connection_request(TCP_SYN));
        assert!(!is_connection_request(TCP_SYN | TCP_ACK));
        assert!(!is_connection_request(TCP_ACK));
    }

    #[test]
    fn flow_ends_only_after_fin_from_both_sides() {
        let s = initial(TCP_SYN);
        let s = advance(s, TCP_SYN | TCP_ACK, FromBackend);
        assert_eq!(s & ESTABLISHED, ESTABLISHED);
        let s = advance(s, TCP_FIN | TCP_ACK, FromClient);
        assert!(!has_ended(s), "half-closed flow still carries data");
        let s = advance(s, TCP_FIN | TCP_ACK, FromBackend);
        assert!(has_ended(s));
    }

    #[test]
    fn rst_from_either_side_ends_the_flow() {
        assert!(has_ended(advance(initial(TCP_SYN), TCP_RST, FromClient)));
        assert!(has_ended(advance(initial(TCP_SYN), TCP_RST | TCP_ACK, FromBackend)));
    }

    #[test]
    fn backend_replies_are_classified_once_per_flow() {
        let syn = initial(TCP_SYN);
        assert_eq!(backend_signal(syn, TCP_SYN | TCP_ACK), BackendSignal::Handshake);
        let established = advance(syn, TCP_SYN | TCP_ACK, FromBackend);
        assert_eq!(
            backend_signal(established, TCP_SYN | TCP_ACK),
            BackendSignal::None,
            "a retransmitted SYN-ACK"
        );
        assert_eq!(backend_signal(syn, TCP_RST | TCP_ACK), BackendSignal::Refused);
        assert_eq!(backend_signal(established, TCP_RST), BackendSignal::Reset);
        assert_eq!(backend_signal(established, TCP_ACK), BackendSignal::None);
        let reset = advance(established, TCP_RST, FromBackend);
        assert_eq!(
            backend_signal(reset, TCP_RST),
            BackendSignal::None,
            "a second RST is not a second reset"
        );
    }

    #[test]
    fn phases_follow_the_handshake_and_the_close() {
        let syn = initial(TCP_SYN);
        assert_eq!(phase(syn), FlowPhase::SynSent);
        assert_eq!(phase(initial(TCP_ACK)), FlowPhase::SynSent, "adopted mid-stream");
        let established = advance(syn, TCP_SYN | TCP_ACK, FromBackend);
        assert_eq!(phase(established), FlowPhase::Established);
        let half_closed = advance(established, TCP_FIN, FromBackend);
        assert_eq!(phase(half_closed), FlowPhase::Closing { established: true });
        assert_eq!(
            phase(advance(syn, TCP_FIN, FromClient)),
            FlowPhase::Closing { established: false }
        );
        assert_eq!(phase(advance(half_closed, TCP_FIN, FromClient)), FlowPhase::Closed);
        assert_eq!(phase(advance(established, TCP_RST, FromClient)), FlowPhase::Closed);
    }

    #[test]
    fn only_closed_flows_are_not_open_and_each_phase_has_its_ctl_name() {
        let phases = [
            (FlowPhase::SynSent, true, "syn-sent"),
            (FlowPhase::Established, true, "established"),
            (FlowPhase::Closing { established: false }, true, "closing"),
            (FlowPhase::Closing { established: true }, true, "closing"),
            (FlowPhase::Closed, false, "closed"),
        ];
        for (phase, open, name) in phases {
            assert_eq!((phase.is_open(), phase.name()), (open, name), "{phase:?}");
        }
    }

    #[test]
    fn two_fins_from_the_client_do_not_end_the_flow() {
        let s = advance(initial(TCP_SYN), TCP_FIN, FromClient);
        assert!(!has_ended(advance(s, TCP_FIN, FromClient)));
    }
}
