//! Which backend segments a `gateway` flow owns. Under `gateway` the
//! backend sees the client's own address and port, so a connection the
//! client opens to the backend directly, from a port a gateway flow to that
//! backend used, has the flow's 4-tuple: the backend cannot tell the two
//! apart, and the flow's reverse entry matches the direct connection's
//! replies. While the flow is open that is a collision no one can resolve.
//! Once it has ended, the backend can only still send the ended
//! connection's last segments (its final ACK, a retransmitted FIN, data the
//! client has not acknowledged), all at sequence numbers from what the
//! client last acknowledged up to what the backend sent. Anything else (a
//! SYN-ACK with a fresh ISN and what follows it) belongs to a connection
//! that did not go through the VIP, and passes to the kernel untouched.

use crate::{
    flow_state::{Segment, TCP_SYN, has_ended},
    maps::{FlowOf, WireAddr},
};

/// How far below what the client acknowledged an ended connection's
/// segment may start: a retransmission the backend sent before that
/// acknowledgment reached it.
pub const ENDED_SLACK: u32 = 65_535;

/// Whether the backend segment `seg` (sequence number in the flow's
/// numbering) belongs to `flow`'s own connection.
#[inline(always)]
pub const fn owns_backend_segment<A: WireAddr>(flow: &FlowOf<A>, seg: &Segment) -> bool {
    if !has_ended(flow.state) {
        return true;
    }
    if seg.flags & TCP_SYN != 0 {
        return false;
    }
    let from = flow.client.ack.wrapping_sub(ENDED_SLACK);
    seg.seq.wrapping_sub(from) <= flow.backend.end.wrapping_sub(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        flow_state::{Direction, TCP_ACK, TCP_FIN, advance, opened_by},
        maps::Flow,
    };

    const CLIENT_ISN: u32 = 1_000;
    const BACKEND_ISN: u32 = u32::MAX - 100;

    fn seg(flags: u8, seq: u32, ack: u32, payload_len: u32) -> Segment {
        Segment {
            flags,
            seq,
            ack,
            payload_len,
        }
    }

    /// A connection that carried 500 bytes each way, then closed by the
    /// backend first: its FIN, the client's FIN; the backend's final ACK is
    /// still to come. The backend's numbers wrap past zero on the way.
    fn ended() -> Flow {
        let (state, client, backend) = opened_by(&seg(TCP_SYN, CLIENT_ISN, 0, 0));
        let mut flow = Flow {
            state,
            client,
            backend,
            ..Default::default()
        };
        let (c, b) = (CLIENT_ISN + 1, BACKEND_ISN.wrapping_add(1));
        let steps = [
            (Direction::FromBackend, seg(TCP_SYN | TCP_ACK, BACKEND_ISN, c, 0)),
            (Direction::FromClient, seg(TCP_ACK, c, b, 500)),
            (Direction::FromBackend, seg(TCP_ACK, b, c + 500, 500)),
            (
                Direction::FromBackend,
                seg(TCP_FIN | TCP_ACK, b.wrapping_add(500), c + 500, 0),
            ),
            (
                Direction::FromClient,
                seg(TCP_FIN | TCP_ACK, c + 500, b.wrapping_add(501), 0),
            ),
        ];
        for (dir, s) in &steps {
            assert!(
                owns_backend_segment(&flow, s),
                "an open flow owns every backend segment"
            );
            advance(&mut flow, *dir, s);
        }
        assert!(has_ended(flow.state));
        flow
    }

    #[test]
    fn an_ended_flow_owns_its_connections_last_segments() {
        let flow = ended();
        let end = BACKEND_ISN.wrapping_add(502);
        let final_ack = seg(TCP_ACK, end, CLIENT_ISN + 502, 0);
        let fin_again = seg(TCP_FIN | TCP_ACK, end.wrapping_sub(1), CLIENT_ISN + 501, 0);
        let data_again = seg(TCP_ACK, end.wrapping_sub(501), CLIENT_ISN + 501, 500);
        for s in [final_ack, fin_again, data_again] {
            assert!(owns_backend_segment(&flow, &s), "{s:?}");
        }
    }

    #[test]
    fn an_ended_flow_does_not_own_another_connection_on_its_4_tuple() {
        let flow = ended();
        let fresh_isn = 0x4000_0000;
        for s in [
            seg(TCP_SYN | TCP_ACK, fresh_isn, 77_001, 0),
            seg(TCP_ACK, fresh_isn + 1, 77_101, 1_000),
            seg(TCP_FIN | TCP_ACK, fresh_isn + 1_001, 77_101, 0),
            // A SYN-ACK whose ISN happens to fall among the ended
            // connection's numbers: no ended connection sends a SYN.
            seg(TCP_SYN | TCP_ACK, BACKEND_ISN.wrapping_add(502), 77_001, 0),
        ] {
            assert!(!owns_backend_segment(&flow, &s), "{s:?}");
        }
    }
}
