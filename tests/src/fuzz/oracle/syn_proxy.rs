//! The oracle's model of the SYN proxy (bg-lb-ebpf's `synproxy`; the
//! README's "SYN flood defence"): exactly what the program may send for a
//! service in proxy mode. Unlike the rest of the oracle this part keeps
//! state, learnt only from outputs it accepted: the cookies the program
//! sent (so it knows which ACKs prove one, as the kernel's check finds
//! them) and, per proxied flow, the client's ISN, cookie, window and MSS,
//! the offset once the backend answered, and the segment held meanwhile.
//! The maps are read to cross-check, never for what is expected.
//!
//! # What the proxy may send
//! - A **cookie SYN-ACK**, by XDP_TX, to a SYN whose checksums hold: from
//!   the VIP, acknowledging the SYN, with a window and an MSS option of the
//!   configured MSS and no other option, built whole (TTL 64, DF).
//! - The **SYN to the backend**, in place of a client ACK that proves a
//!   cookie the program sent (the flow is pinned for it), or later in place
//!   of another segment of that flow while its backend has not answered:
//!   the client's ISN, the window of its proving ACK, the MSS the cookie
//!   encodes, no other option.
//! - A **RST refusing a proven cookie ACK** that no backend or SNAT port
//!   can take, as a SYN would be refused (numbers judged with every answer).
//! - The **ACK to the backend's SYN-ACK**, by XDP_TX, in the client's
//!   place: seq = the SYN-ACK's ack, ack = its seq + 1, the client's
//!   window; or the client segment held for it, byte for byte, forwarded.
//!   The first SYN-ACK sets the flow's offset, backend ISN - cookie.
//! - **Translated segments** once the backend answered: client segments
//!   with the offset added to their ack, backend segments with it taken
//!   from their seq. Before, only RSTs pass: the client's untranslated, the
//!   backend's at cookie + 1, the one number the client accepts.
//! - **ICMP errors to the backend** quote its own numbers: the client's
//!   segment's sequence number plus the offset.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use bg_lb_common::syn_proxy::{
    BACKEND_READY, COOKIE_MSS6, DEFAULT_MSS6, HELD, HELD_PAYLOAD_MAX, IPV6_MSS_REDUCTION, PROXIED,
};

use super::{Class, Ip, Key, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Tcp};

/// The kernel's SYN cookie MSS table (net/ipv4/syncookies.c `msstab`), and
/// the MSS it assumes for a SYN without the option (`TCP_MSS_DEFAULT`).
const KERNEL_COOKIE_MSS: [u16; 4] = [536, 1300, 1440, 1460];
const TCP_MSS_DEFAULT: u16 = 536;

/// The kernel's SYN cookie MSS table (ascending) and the MSS it assumes
/// for a SYN without the option, for a segment of `addr`'s family (IPv6's:
/// net/ipv6/syncookies.c).
fn kernel_mss(addr: IpAddr) -> ([u16; 4], u16) {
    match addr {
        IpAddr::V4(_) => (KERNEL_COOKIE_MSS, TCP_MSS_DEFAULT),
        IpAddr::V6(_) => {
            let mut table = COOKIE_MSS6;
            table.reverse();
            (table, DEFAULT_MSS6)
        }
    }
}

/// What the model reads of a flow entry (either family's).
#[derive(Clone, Copy, Debug)]
pub(super) struct ProxyView {
    pub(super) created_ns: u64,
    pub(super) proxy: u32,
    pub(super) seq_delta: u32,
}

#[derive(Clone)]
pub(super) struct ProxyModel {
    /// The MSS the service's SYN-ACKs offer.
    offered_mss: u16,
    /// Every cookie the program sent, by (client, VIP).
    cookies: HashMap<(SocketAddr, SocketAddr), Vec<SentCookie>>,
    flows: HashMap<Key, Proxied>,
    /// Backend SYNs with the fallback MSS: the kernel's cookie clock ticked
    /// between a SYN and its ACK, so the program could not read the MSS
    /// back (documented in `synproxy::cookie_mss`).
    pub(super) mss_fallbacks: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct SentCookie {
    /// The client's ISN.
    isn: u32,
    cookie: u32,
    /// The index of the MSS it encodes in the kernel's table.
    mss_index: u32,
}

/// A proxied flow as the oracle saw it opened.
#[derive(Clone)]
struct Proxied {
    /// The flow entry's, to tell it from a later flow of the same key.
    created_ns: u64,
    isn: u32,
    cookie: u32,
    window: u16,
    mss: u16,
    /// Backend ISN - cookie, once the backend's SYN-ACK was answered.
    delta: Option<u32>,
    held: Option<Held>,
}

#[derive(Clone)]
struct Held {
    seq: u32,
    flags: u8,
    payload: Vec<u8>,
}

type Checked = Result<(), String>;

/// The index in the kernel's table of the MSS a cookie for a SYN with TCP
/// `options` encodes: the option's value parsed as the kernel's
/// `tcp_parse_mss_option` does, rounded down to the table.
fn cookie_mss_index(options: &[u8], family: IpAddr) -> u32 {
    let mut mss = 0;
    let mut rest = options;
    while let [kind, tail @ ..] = rest {
        match kind {
            0 => break,
            1 => rest = tail,
            _ => {
                let Some(&size) = tail.first() else { break };
                let size = size as usize;
                if size < 2 || size > rest.len() {
                    break;
                }
                if *kind == 2 && size == 4 {
                    let value = u16::from_be_bytes([rest[2], rest[3]]);
                    if value != 0 {
                        mss = value;
                    }
                }
                rest = &rest[size..];
            }
        }
    }
    let (table, default) = kernel_mss(family);
    let mss = if mss == 0 { default } else { mss };
    table.iter().rposition(|&m| mss >= m).unwrap_or(0) as u32
}

fn mss_option(mss: u16) -> [u8; 4] {
    let [hi, lo] = mss.to_be_bytes();
    [2, 4, hi, lo]
}

/// A segment the program writes whole rather than rewrites: IPv4 without
/// options, TOS 0, ID 0, DF, TTL 64 (IPv6: traffic class and flow label 0,
/// hop limit 64); both checksums right; `flags`, `window` and `options` as
/// given.
fn built(what: &str, out_ip: &Ip<'_>, out: &Tcp<'_>, flags: u8, window: u16, options: &[u8]) -> Checked {
    let h = out_ip.header;
    let header_built = match out_ip.src {
        IpAddr::V4(_) => h[..2] == [0x45, 0] && h[4..10] == [0, 0, 0x40, 0, 64, 6] && out_ip.header_ok,
        IpAddr::V6(_) => h[..4] == [0x60, 0, 0, 0] && h[6..8] == [6, 64],
    };
    if !header_built || !out.checksum_ok {
        return Err(format!(
            "{what}: IP header {h:02x?} (TCP checksum right: {}), not one built whole",
            out.checksum_ok
        ));
    }
    if (out.flags, out.window, out.options) != (flags, window, options) {
        return Err(format!(
            "{what} with flags {:#04x}, window {}, options {:02x?}: {flags:#04x}, {window}, {options:02x?} expected",
            out.flags, out.window, out.options
        ));
    }
    Ok(())
}

/// `out` carries sequence number `seq` and acknowledgment number `ack`.
fn numbers(what: &str, out: &Tcp<'_>, seq: u32, ack: u32) -> Checked {
    if (out.seq, out.ack) == (seq, ack) {
        return Ok(());
    }
    Err(format!(
        "{what} with seq {} ack {}: seq {seq} ack {ack} expected",
        out.seq, out.ack
    ))
}

/// A segment forwarded without translation.
pub(super) fn untranslated(seg: &Tcp<'_>, out: &Tcp<'_>) -> Checked {
    numbers("a segment of a flow the proxy has no part in", out, seg.seq, seg.ack)
}

impl ProxyModel {
    pub(super) fn new(offered_mss: u16) -> Self {
        ProxyModel {
            offered_mss,
            cookies: HashMap::new(),
            flows: HashMap::new(),
            mss_fallbacks: 0,
        }
    }

    /// The flow's model, if the oracle saw this very flow opened.
    fn model(&self, key: &Key, flow: &ProxyView) -> Result<&Proxied, String> {
        self.flows
            .get(key)
            .filter(|m| m.created_ns == flow.created_ns)
            .ok_or_else(|| format!("{}'s proxied flow, which the oracle never saw opened", key.client()))
    }

    /// The offset of a flow whose backend answered: the oracle's, which
    /// the flow entry must hold too.
    fn delta(&self, key: &Key, flow: &ProxyView) -> Result<u32, String> {
        let delta = self.model(key, flow)?.delta.ok_or_else(|| {
            format!(
                "{}'s flow is marked answered by its backend, but the oracle saw no SYN-ACK answered",
                key.client()
            )
        })?;
        if flow.seq_delta != delta {
            return Err(format!(
                "{}'s flow holds offset {:#x}, its backend's SYN-ACK made it {delta:#x}",
                key.client(),
                flow.seq_delta
            ));
        }
        Ok(delta)
    }

    /// The cookie `seg` proves (its ack less one) and the MSS that encodes,
    /// as the kernel's check (`__cookie_v4_check`) finds them. A cookie is
    /// hash + ISN + (hash' + MSS index) mod 2^24 (the clock count above),
    /// and the check takes the index back as ack - 1 - hash - (seq - 1) -
    /// hash', accepting any index of the table. So a cookie the program
    /// sent proves more than its own ACK: one whose ack or seq is off by a
    /// few still lands on an index in 0..=3, and so proves a cookie with
    /// that index (another MSS). The proxy has nothing to do with this and
    /// cannot tell; the kernel's own SYN cookies share it. Only a few such
    /// neighbours of each cookie the program sent pass, nothing else.
    fn proven(&self, seg: &Tcp<'_>) -> Option<(u32, u16)> {
        if seg.flags & (TCP_SYN | TCP_RST | TCP_ACK) != TCP_ACK {
            return None;
        }
        let (isn, cookie) = (seg.seq.wrapping_sub(1), seg.ack.wrapping_sub(1));
        let sent = self.cookies.get(&(seg.src, seg.dst))?;
        sent.iter().find_map(|sent| {
            let index = sent
                .mss_index
                .wrapping_add(cookie.wrapping_sub(sent.cookie))
                .wrapping_sub(isn.wrapping_sub(sent.isn));
            kernel_mss(seg.src.ip()).0.get(index as usize).map(|&mss| (cookie, mss))
        })
    }

    /// Whether a RST answering `seg` (not a connection request) is the
    /// refusal of a proven cookie: `seg` proves one, and no flow was pinned
    /// for it (no backend or SNAT port could take it).
    pub(super) fn refuses(&self, seg: &Tcp<'_>, flowless: bool) -> bool {
        flowless && self.proven(seg).is_some()
    }

    /// The cookie SYN-ACK `out` answering the SYN `seg` (whose ack and
    /// addressing the caller checked); remembers the cookie.
    pub(super) fn cookie_syn_ack(&mut self, in_ip: &Ip<'_>, seg: &Tcp<'_>, out_ip: &Ip<'_>, out: &Tcp<'_>) -> Checked {
        // The job checks what a receiver would before answering (README:
        // a SYN-ACK goes only where a valid SYN came from).
        if !in_ip.header_ok || (seg.payload.is_empty() && !seg.checksum_ok) {
            return Err("a cookie SYN-ACK to a SYN with a wrong checksum".to_owned());
        }
        let offered = match seg.src {
            SocketAddr::V4(_) => self.offered_mss,
            SocketAddr::V6(_) => self.offered_mss.saturating_sub(IPV6_MSS_REDUCTION),
        };
        built(
            "a cookie SYN-ACK",
            out_ip,
            out,
            TCP_SYN | TCP_ACK,
            offered,
            &mss_option(offered),
        )?;
        if !out.payload.is_empty() {
            return Err("a cookie SYN-ACK with a payload".to_owned());
        }
        let cookie = SentCookie {
            isn: seg.seq,
            cookie: out.seq,
            mss_index: cookie_mss_index(seg.options, seg.src.ip()),
        };
        let sent = self.cookies.entry((seg.src, seg.dst)).or_default();
        if !sent.contains(&cookie) {
            sent.push(cookie);
        }
        Ok(())
    }

    /// A client segment's output to its flow's backend, `flow` as the run
    /// left it: the proxy's SYN (`Some(class)`), or the segment forwarded
    /// with its numbers translated as the flow requires (`None`).
    pub(super) fn client_to_backend(
        &mut self,
        key: &Key,
        flow: &ProxyView,
        seg: &Tcp<'_>,
        out_ip: &Ip<'_>,
        out: &Tcp<'_>,
    ) -> Result<Option<Class>, String> {
        if flow.proxy & PROXIED == 0 {
            return untranslated(seg, out).map(|()| None);
        }
        if out.flags == TCP_SYN && seg.flags & TCP_SYN == 0 {
            return self.syn_to_backend(key, flow, seg, out_ip, out).map(Some);
        }
        if flow.proxy & BACKEND_READY == 0 {
            // Its backend has seen only the LB's SYN: a client RST resets
            // that by its sequence number alone; anything else waits.
            if seg.flags & TCP_RST == 0 {
                return Err(format!(
                    "forwarded {}'s segment (flags {:#04x}) before its backend answered the proxy's SYN",
                    key.client(),
                    seg.flags
                ));
            }
            return numbers("a client RST before the backend answered", out, seg.seq, seg.ack).map(|()| None);
        }
        let delta = self.delta(key, flow)?;
        let ack = if seg.flags & TCP_ACK != 0 {
            seg.ack.wrapping_add(delta)
        } else {
            seg.ack
        };
        numbers("a proxied flow's client segment", out, seg.seq, ack).map(|()| None)
    }

    /// The proxy's SYN to the backend: opening the flow for a proven cookie
    /// ACK, or again in place of a segment of a flow it opened.
    fn syn_to_backend(
        &mut self,
        key: &Key,
        flow: &ProxyView,
        seg: &Tcp<'_>,
        out_ip: &Ip<'_>,
        out: &Tcp<'_>,
    ) -> Result<Class, String> {
        if flow.proxy & BACKEND_READY != 0 {
            return Err(format!(
                "a SYN to {}'s backend after the backend answered",
                key.client()
            ));
        }
        let again = self.model(key, flow).is_ok();
        if again {
            // ResendSyn: any segment but a SYN (dropped) or a RST (forwarded).
            if seg.flags & (TCP_SYN | TCP_RST) != 0 {
                return Err(format!(
                    "the proxy's SYN sent again in place of flags {:#04x}",
                    seg.flags
                ));
            }
        } else {
            let (cookie, encoded) = self.proven(seg).ok_or_else(|| {
                format!(
                    "a SYN to the backend for {}'s segment seq {} ack {}, which proves no cookie the program sent",
                    seg.src, seg.seq, seg.ack
                )
            })?;
            // The program reads the MSS back by regenerating the cookie; in
            // the cookie clock's next period it cannot and uses 536.
            let default = kernel_mss(seg.src.ip()).1;
            let mss = if out.options == mss_option(default) && encoded != default {
                self.mss_fallbacks += 1;
                default
            } else {
                encoded
            };
            // A segment with data proves the cookie too (its ACK was lost),
            // and its data is held if one segment's worth.
            let held = (!seg.payload.is_empty() && seg.payload.len() <= HELD_PAYLOAD_MAX).then(|| Held {
                seq: seg.seq,
                flags: seg.flags,
                payload: seg.payload.to_vec(),
            });
            let model = Proxied {
                created_ns: flow.created_ns,
                isn: seg.seq.wrapping_sub(1),
                cookie,
                window: seg.window,
                mss,
                delta: None,
                held,
            };
            self.flows.insert(*key, model);
        }
        let m = self.model(key, flow)?;
        let proxy = PROXIED | if m.held.is_some() { HELD } else { 0 };
        if flow.proxy != proxy {
            return Err(format!(
                "the proxy's SYN sent with flow bits {:#x}, {proxy:#x} expected",
                flow.proxy
            ));
        }
        built(
            "the proxy's SYN to the backend",
            out_ip,
            out,
            TCP_SYN,
            m.window,
            &mss_option(m.mss),
        )?;
        if !out.payload.is_empty() {
            return Err("the proxy's SYN with a payload".to_owned());
        }
        numbers("the proxy's SYN to the backend", out, m.isn, 0)?;
        Ok(if again { Class::ProxySynAgain } else { Class::ProxySyn })
    }

    /// The program's answer to the backend's segment `seg` for flow `key`
    /// (the caller checked the addressing and MACs): the ACK (XDP_TX) or
    /// the held segment (forwarded) in the client's place.
    pub(super) fn answer_backend(
        &mut self,
        key: &Key,
        flow: &ProxyView,
        seg: &Tcp<'_>,
        forwarded: bool,
        out_ip: &Ip<'_>,
        out: &Tcp<'_>,
    ) -> Result<Class, String> {
        if flow.proxy != PROXIED | BACKEND_READY {
            return Err(format!(
                "answered {}'s backend, whose flow has proxy bits {:#x}",
                key.client(),
                flow.proxy
            ));
        }
        if seg.flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) != TCP_SYN | TCP_ACK {
            return Err(format!(
                "answered a backend segment with flags {:#04x}: only its SYN-ACK is the proxy's",
                seg.flags
            ));
        }
        self.model(key, flow)?;
        let m = self.flows.get_mut(key).expect("found above");
        // The first SYN-ACK sets the offset; a retransmission leaves it.
        let delta = *m.delta.get_or_insert(seg.seq.wrapping_sub(m.cookie));
        if flow.seq_delta != delta {
            return Err(format!(
                "{}'s flow holds offset {:#x} after its backend's SYN-ACK, {delta:#x} expected",
                key.client(),
                flow.seq_delta
            ));
        }
        let ack = seg.seq.wrapping_add(1);
        if !forwarded {
            if m.held.is_some() {
                return Err("a bare ACK to the backend while a client segment was held for it".to_owned());
            }
            built("the ACK to the backend's SYN-ACK", out_ip, out, TCP_ACK, m.window, &[])?;
            if !out.payload.is_empty() {
                return Err("the ACK to the backend's SYN-ACK with a payload".to_owned());
            }
            numbers("the ACK to the backend's SYN-ACK", out, seg.ack, ack)?;
            return Ok(Class::ToBackendAnswer);
        }
        let held = m
            .held
            .take()
            .ok_or("a segment forwarded to the backend in its SYN-ACK's place, but none was held")?;
        built("the held segment", out_ip, out, held.flags, m.window, &[])?;
        if out.payload != held.payload {
            return Err("the held segment's payload changed".to_owned());
        }
        numbers("the held segment", out, held.seq, ack)?;
        Ok(Class::HeldToBackend)
    }

    /// A backend segment of flow `key` forwarded to the client.
    pub(super) fn backend_to_client(&self, key: &Key, flow: &ProxyView, seg: &Tcp<'_>, out: &Tcp<'_>) -> Checked {
        if flow.proxy & PROXIED == 0 {
            return untranslated(seg, out);
        }
        if seg.flags & TCP_SYN != 0 {
            return Err(format!(
                "the backend's SYN forwarded to {}, whose handshake the LB completed",
                key.client()
            ));
        }
        if flow.proxy & BACKEND_READY == 0 {
            if seg.flags & TCP_RST == 0 {
                return Err(format!(
                    "a backend segment (flags {:#04x}) forwarded to {} before its SYN-ACK",
                    seg.flags,
                    key.client()
                ));
            }
            let cookie = self.model(key, flow)?.cookie;
            return numbers(
                "the backend's refusal of the proxy's SYN",
                out,
                cookie.wrapping_add(1),
                seg.ack,
            );
        }
        let delta = self.delta(key, flow)?;
        numbers(
            "a proxied flow's backend segment",
            out,
            seg.seq.wrapping_sub(delta),
            seg.ack,
        )
    }

    /// What an ICMP error to flow `key`'s backend adds to the quoted
    /// sequence number.
    pub(super) fn quoted_seq_shift(&self, key: &Key, flow: &ProxyView) -> Result<u32, String> {
        if flow.proxy & (PROXIED | BACKEND_READY) == PROXIED | BACKEND_READY {
            self.delta(key, flow)
        } else {
            Ok(0)
        }
    }

    /// A client segment `seg` of flow `key` the program dropped: if the
    /// proxy held its data (its flow has just been marked so), remembers it.
    pub(super) fn dropped(&mut self, key: &Key, flow: &ProxyView, seg: &Tcp<'_>) -> Option<Class> {
        if seg.payload.is_empty() {
            return None;
        }
        let m = self.flows.get_mut(key).filter(|m| m.created_ns == flow.created_ns)?;
        if flow.proxy & HELD == 0 || m.held.is_some() {
            return None;
        }
        m.held = Some(Held {
            seq: seg.seq,
            flags: seg.flags,
            payload: seg.payload.to_vec(),
        });
        Some(Class::Held)
    }

    /// The backend's SYN-ACK `seg` to flow `key` was dropped, yet the run
    /// left the flow answered: the program took the offset (and, if the
    /// flow no longer holds one, the held segment) before its answer could
    /// not be sent (the frame could not become it, or the held segment had
    /// no route or was too big for its path). That is by design: the
    /// backend's retransmitted SYN-ACK then
    /// gets the bare ACK, and the client sends its data again. The offset
    /// must be this SYN-ACK's.
    pub(super) fn answer_dropped(&mut self, key: &Key, flow: &ProxyView, seg: &Tcp<'_>) -> Checked {
        let answered = PROXIED | BACKEND_READY;
        let syn_ack = seg.flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN | TCP_ACK;
        if flow.proxy & answered != answered || !syn_ack {
            return Ok(());
        }
        self.model(key, flow)?;
        let m = self.flows.get_mut(key).expect("found above");
        if m.delta.is_some() {
            return Ok(()); // a retransmission: nothing new to learn
        }
        let delta = seg.seq.wrapping_sub(m.cookie);
        if flow.seq_delta != delta {
            return Err(format!(
                "{}'s flow holds offset {:#x} after its backend's dropped SYN-ACK, {delta:#x} expected",
                key.client(),
                flow.seq_delta
            ));
        }
        m.delta = Some(delta);
        if flow.proxy & HELD == 0 {
            m.held = None;
        }
        Ok(())
    }

    /// Each proxied flow in `flows` is one the oracle saw opened, answered
    /// by its backend exactly when the oracle saw that, holding a segment
    /// exactly when the oracle saw one held.
    pub(super) fn check_flows(&self, flows: &HashMap<Key, ProxyView>) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, flow) in flows.iter().filter(|(_, f)| f.proxy & PROXIED != 0) {
            let m = match self.model(key, flow) {
                Ok(m) => m,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            let ready = flow.proxy & BACKEND_READY != 0;
            if ready != m.delta.is_some() || (ready && m.delta != Some(flow.seq_delta)) {
                problems.push(format!(
                    "{}'s flow: proxy bits {:#x}, offset {:#x}; the oracle saw offset {:?}",
                    key.client(),
                    flow.proxy,
                    flow.seq_delta,
                    m.delta
                ));
            }
            if (flow.proxy & HELD != 0) != m.held.is_some() {
                problems.push(format!(
                    "{}'s flow: proxy bits {:#x}, but the oracle saw {} held",
                    key.client(),
                    flow.proxy,
                    if m.held.is_some() { "a segment" } else { "nothing" }
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_mss_parses_options_as_the_kernel_and_rounds_down_to_its_table() {
        let v4 = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let cookie_mss = |options: &[u8]| KERNEL_COOKIE_MSS[cookie_mss_index(options, v4) as usize];
        assert_eq!(cookie_mss(&[]), 536, "no option: the default");
        assert_eq!(cookie_mss(&[2, 4, 0x05, 0xb4]), 1460);
        assert_eq!(cookie_mss(&[1, 1, 2, 4, 0x05, 0x78]), 1300, "1400 after NOPs");
        assert_eq!(cookie_mss(&[2, 4, 0x01, 0x00]), 536, "256: below the table");
        assert_eq!(cookie_mss(&[2, 4, 0, 0]), 536, "a zero MSS is ignored");
        assert_eq!(cookie_mss(&[0, 2, 4, 0x05, 0xb4]), 536, "after the end of options");
        assert_eq!(cookie_mss(&[8, 40, 2, 4, 0x05, 0xb4]), 536, "a length past the header");
        assert_eq!(cookie_mss(&[0xfe, 0xff, 0x01, 0x00]), 536);
        assert_eq!(cookie_mss(&[4, 2, 2, 4, 0x05, 0xa0]), 1440, "1440 after SACK permitted");
    }
}
