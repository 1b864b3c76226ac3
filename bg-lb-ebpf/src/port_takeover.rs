//! Taking a SNAT port over from a flow that has ended, for a new
//! connection, when its reverse-NAT entry still names that flow
//! ([`bg_lb_common::port_reuse`] decides when that is safe).
//!
//! Two CPUs must never both take one port. The entry changes owner only by
//! a compare-and-swap of its `claim` word (`BPF_CMPXCHG`, kernel 5.12+),
//! from the claim read before the owner was judged to a new one with
//! [`NatOwner::TAKING_OVER`] set; the winner then writes the new owner and
//! clears the bit, another compare-and-swap. A CPU that reads the bit set,
//! or whose swap fails because the claim moved, tries its next candidate.
//! A reader of the owner (the reply path) may see the old key, the new one
//! or a mix while it is written; it uses a key only if that key's flow is
//! pinned to this very (backend, SNAT port), which no mix is, and the new
//! flow's SYN leaves only after the write.
//!
//! Under `gateway` a 5-tuple's SYN takes its own ended flow's entry back
//! whatever the backend's TIME_WAIT ([`port_reuse::reconnects_on_own_4_tuple`]),
//! through the same compare-and-swap.
//!
//! A claim is the new flow's `created_ns`, so the flow an entry names is
//! known to be the one that claimed it; between the claim and the new
//! flow's insert into FLOWS (or if that 5-tuple's older flow is still
//! there) the entry is left alone.

use bg_lb_common::{
    maps::{FlowKeyOf, FlowOf, NatKeyOf, NatOwner, NatOwnerOf},
    port_reuse::{self, Syn},
};

use crate::maps::{FamilyMaps, flow_entry};

/// How long a claim may go without its flow in the flow table: the new
/// flow's entry goes in right after its port is claimed, so an entry
/// claimed this recently whose flow is missing, or is another incarnation
/// of its 5-tuple, is a claim still under way, not a free port.
const CLAIM_SETTLE_NS: u64 = 1_000_000_000;

/// Makes `key` the owner of `nat` for its new flow, of backend id and
/// generation `backend` (packed by [`backend_of`]: the BPF call has five
/// argument registers, and a struct would cost stack the program does not
/// have), created at `now` (its `created_ns`, which becomes the entry's
/// claim), if the flow that owns the port has ended in a way that lets
/// `syn` reuse it. Returns whether it did.
///
/// Not inlined: a BPF-to-BPF call, so the verifier meets the SNAT candidate
/// loop's next iteration in one state whichever way this returned false
/// (inlined, every failing branch carried its own state into the next
/// candidate, and the states multiplied past the verifier's limit).
#[inline(never)]
pub fn take_over<A: FamilyMaps>(nat: &NatKeyOf<A>, key: &FlowKeyOf<A>, syn: &Syn, backend: u64, now: u64) -> bool {
    let Some(entry) = A::reverse_nat().get_ptr_mut(nat) else {
        return false;
    };
    // SAFETY: a preallocated map's values stay mapped for the whole run; the
    // claim is read before the owner, and the swap below fails if either
    // changed since.
    let claim_ptr = unsafe { &raw mut (*entry).claim };
    let claim = unsafe { core::ptr::read_volatile(claim_ptr) };
    if claim & NatOwner::TAKING_OVER != 0 {
        return false;
    }
    // SAFETY: as above.
    let owner = unsafe { core::ptr::read_volatile(&raw const (*entry).flow) };
    // The owner judged is the flow the entry names only if that flow is
    // pinned to this port; otherwise no flow is (an orphan).
    // A UDP flow's pair (its service's backend ids are not this one's, so it
    // would look like an orphan) stays its own while the flow lives: UDP
    // has no end to wait for.
    if owner.proto != key.proto && flow_entry(&owner).is_some() {
        return false;
    }
    let found = flow_entry(&owner);
    let pinned_here = found.as_ref().is_some_and(|f| {
        backend_of(f.backend_id, f.backend_gen) == backend
            && f.snat_addr == nat.snat_addr
            && f.snat_port == nat.snat_port
    });
    if let Some(newer) = found.as_ref().filter(|_| !pinned_here) {
        // The entry's 5-tuple opened a newer connection on another port,
        // replacing the flow that knew how this one closed: it closed
        // before that one opened, and the backend may hold it in TIME_WAIT
        // until then plus TIME_WAIT's length.
        if port_reuse::newer_flow_guards(newer, now) {
            return false;
        }
    }
    let owner_flow = found.filter(|_| pinned_here);
    // A gateway flow's own reconnection: the client's stack and the
    // backend decide, as without a load balancer; only the claim, which no
    // two CPUs both win, still applies.
    let own_4_tuple = owner_flow
        .as_deref()
        .is_some_and(|f| reconnects_on_own_4_tuple(&owner, key, f));
    let claimer = owner_flow
        .as_ref()
        .is_some_and(|f| f.created_ns & !NatOwner::TAKING_OVER == claim);
    if !claimer && now.saturating_sub(claim) < CLAIM_SETTLE_NS {
        return false;
    }
    if !own_4_tuple && !port_reuse::reusable(owner_flow.as_deref(), syn, now) {
        return false;
    }
    let taking = NatOwnerOf::new(*key, now).claim | NatOwner::TAKING_OVER;
    if !compare_exchange(claim_ptr, claim, taking) {
        return false;
    }
    // SAFETY: this CPU won the swap: no other writes the owner until the
    // bit is cleared.
    unsafe { core::ptr::write_volatile(&raw mut (*entry).flow, *key) };
    compare_exchange(claim_ptr, taking, taking & !NatOwner::TAKING_OVER);
    true
}

/// [`port_reuse::reconnects_on_own_4_tuple`] as a BPF-to-BPF call (a leaf
/// without a stack frame): inlined, what it reads stayed live across the
/// rest of [`take_over`] and spilled past the stack the verifier allows.
#[inline(never)]
fn reconnects_on_own_4_tuple<A: FamilyMaps>(owner: &FlowKeyOf<A>, key: &FlowKeyOf<A>, flow: &FlowOf<A>) -> bool {
    port_reuse::reconnects_on_own_4_tuple(owner, key, flow)
}

/// A backend id and generation in one register, for [`take_over`].
#[inline(always)]
pub const fn backend_of(id: u32, generation: u32) -> u64 {
    (id as u64) << 32 | generation as u64
}

/// `*ptr = new` if `*ptr == expected`, atomically across CPUs (fully
/// ordered); whether it swapped. aya-ebpf has no wrapper for the BPF
/// compare-and-exchange, so it is written out, as the atomic add in
/// `synproxy`: the instruction takes the expected value in r0 and leaves
/// the value it found there.
#[inline(always)]
fn compare_exchange(ptr: *mut u64, expected: u64, new: u64) -> bool {
    let mut found = expected;
    // SAFETY: `ptr` points into a map value (8-byte aligned), which stays
    // mapped for the whole run.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({0} + 0, r0, {1})",
            in(reg) ptr,
            in(reg) new,
            inout("r0") found,
        )
    };
    found == expected
}
