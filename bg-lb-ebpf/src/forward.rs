//! Sends a rewritten packet on its way: `bpf_fib_lookup` finds the egress
//! interface and next-hop MAC, then XDP_TX (same interface) or XDP_REDIRECT
//! through the TX_PORTS devmap. The fast path never hands the packet to the
//! kernel stack: if the next hop is unresolved the packet is dropped and
//! counted (the daemon keeps backend neighbours resolved).

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_TX},
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use bg_lb_common::counters::Counter;

use crate::{
    maps::{TX_PORTS, count},
    packet::TcpPacket,
};

const AF_INET: u8 = 2;

#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &mut TcpPacket<'_>) -> u32 {
    // SAFETY: FibParams (struct bpf_fib_lookup) holds only integers and
    // unions of integers, for which all zeroes is a valid value.
    let mut fib: FibParams = unsafe { zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = pkt.proto();
    fib.__bindgen_anon_1.tot_len = pkt.ip_len();
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_2.tos = pkt.tos();
    fib.__bindgen_anon_3.ipv4_src = pkt.src_addr();
    fib.__bindgen_anon_4.ipv4_dst = pkt.dst_addr();

    // SAFETY: ctx is this run's XDP context and fib a live parameter block of
    // the size passed; the helper touches no packet memory.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut fib, size_of::<FibParams>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        count(if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
            Counter::FibNoNeighbour
        } else {
            Counter::FibFailed
        });
        return XDP_DROP;
    }
    pkt.set_macs(fib.smac, fib.dmac);
    if fib.ifindex == ctx.ingress_ifindex() as u32 {
        return XDP_TX;
    }
    match TX_PORTS.redirect(fib.ifindex, 0) {
        Ok(action) => action,
        Err(_) => {
            count(Counter::RedirectFailed);
            XDP_DROP
        }
    }
}
