//! Helper XDP programs kept out of the load balancer's object.
#![no_std]
#![no_main]

// Shared with the load balancer so the baseline parses exactly as it does;
// this object uses only part of it.
#[expect(
    dead_code,
    reason = "the helpers use only parse_tcp, the MAC addresses and the ports"
)]
mod packet;

use aya_ebpf::{
    EbpfContext as _,
    bindings::xdp_action::{XDP_ABORTED, XDP_PASS, XDP_TX},
    helpers::generated::bpf_xdp_store_bytes,
    macros::{map, xdp},
    maps::{Array, ProgramArray},
    programs::XdpContext,
};
use bg_lb_common::restore::{PRISTINE_MAX, Pristine, VARIED_PORTS};

#[map]
static PRISTINE: Array<Pristine> = Array::with_max_entries(1, 0);

#[map]
static RESTORED_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Repetitions that varied the source port. One count for all CPUs, not
/// one per CPU: a live test run may move to another CPU between batches
/// (it yields when the scheduler asks), and that CPU's count went on from
/// its own value, repeating ports the call had used already, so their SYNs
/// found a flow instead of making one (seen under `perf record`, which
/// makes such moves frequent). One caller runs the benchmark at a time, so
/// the plain increment below is never raced.
#[map]
static RESTORE_COUNT: Array<u32> = Array::with_max_entries(1, 0);

/// Lets native-mode XDP_TX/REDIRECT frames reach a veth peer: the veth driver
/// only delivers them to a peer that runs an XDP program.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Micro-benchmark baseline, the practical limit: parse Ethernet/IPv4/TCP as
/// the load balancer does, swap MACs and bounce with XDP_TX.
#[xdp]
pub fn xdp_bounce(ctx: XdpContext) -> u32 {
    let Ok(mut pkt) = packet::parse_tcp(&ctx) else {
        return XDP_PASS;
    };
    pkt.swap_macs();
    XDP_TX
}

/// Live-frames benchmark harness: writes the frame in PRISTINE over the
/// packet (the kernel reuses pages without rewriting them), then tail-calls
/// the program under test. Timed through this against the bounce through
/// this, so its own cost cancels out.
#[xdp]
pub fn xdp_restore(ctx: XdpContext) -> u32 {
    if restore(&ctx).is_err() {
        return XDP_ABORTED;
    }
    // SAFETY: a tail call into an XDP program with this same context.
    unsafe { RESTORED_TARGET.tail_call(&ctx, 0) };
    XDP_ABORTED
}

#[inline(always)]
fn restore(ctx: &XdpContext) -> Result<(), ()> {
    let pristine = PRISTINE.get_ptr_mut(0).ok_or(())?;
    // SAFETY: an element of a one-entry array, only read here.
    let (len, vary) = unsafe { ((*pristine).len, (*pristine).vary_source_port) };
    // Bounded both ways for the verifier (the helper's size must be > 0).
    if len == 0 || len > PRISTINE_MAX as u32 {
        return Err(());
    }
    if ctx.data_end() - ctx.data() != len as usize {
        return Err(());
    }
    // SAFETY: copies `len` bytes, within both the element and the packet.
    let stored = unsafe { bpf_xdp_store_bytes(ctx.as_ptr().cast(), 0, (*pristine).frame.as_mut_ptr().cast(), len) };
    if stored != 0 {
        return Err(());
    }
    if vary != 0 {
        let count = RESTORE_COUNT.get_ptr_mut(0).ok_or(())?;
        // SAFETY: an element of a one-entry array; one test run at a time
        // (see RESTORE_COUNT).
        let n = unsafe {
            let n = *count;
            *count = n.wrapping_add(1);
            n
        };
        let mut pkt = packet::parse_tcp(ctx).map_err(|_| ())?;
        let port = ((1024 + n % VARIED_PORTS) as u16).to_be();
        pkt.set_ports(port, pkt.dst_port());
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
