//! ICMP redirects sent by the LB host. A `gateway` service's backends route
//! their packets to the clients through the LB. The kernel forwards those
//! that are no VIP reply (the backend's side of a connection a client opened
//! to it directly, the backend's own connections), and when one leaves by
//! the interface it came in on it also tells the backend to reach that
//! client directly. A Linux backend takes the advice by default (it knows
//! the client's MAC once the client has talked to it) and for minutes sends
//! everything for that client around the LB, gateway flows' replies
//! included, which the client then drops: their source is the backend, not
//! the VIP. The kernel sends a redirect when `all` or the interface has
//! `send_redirects` on, so both must be off.
//!
//! IPv6 has no `send_redirects`: Linux sends an IPv6 redirect whenever it
//! forwards a packet out of the interface it came in on, from its
//! link-local address. A Linux backend takes it when `accept_redirects` is
//! on (its default without forwarding) and the redirect comes from the
//! next hop its route to the client names; the backend side is where it
//! can be stopped ([`IPV6_WARNING`]).

use std::{fs, io, path::PathBuf};

/// What an IPv6 `gateway` service's backends must do, since the LB host
/// cannot stop sending IPv6 redirects.
pub const IPV6_WARNING: &str = "a gateway service with an IPv6 VIP: Linux sends IPv6 redirects whatever its settings \
                                (IPv6 has no send_redirects), and a backend that takes one sends its replies to that \
                                client around the LB, where they fail. On each backend set \
                                net.ipv6.conf.all.accept_redirects = 0 and the same for its interface, or route to \
                                the clients through this host's global address (a redirect comes from its link-local \
                                one, which such a backend ignores)";

/// The `send_redirects` settings that let a redirect out of `ifaces`.
pub fn settings(ifaces: &[&str]) -> Vec<PathBuf> {
    ["all"]
        .iter()
        .chain(ifaces)
        .map(|scope| PathBuf::from(format!("/proc/sys/net/ipv4/conf/{scope}/send_redirects")))
        .collect()
}

/// Turns every one of [`settings`] off: for each, whether it was on.
pub fn turn_off(ifaces: &[&str]) -> Vec<(PathBuf, io::Result<bool>)> {
    settings(ifaces)
        .into_iter()
        .map(|path| {
            let outcome = match fs::read_to_string(&path) {
                Ok(value) if value.trim() == "0" => Ok(false),
                Ok(_) => fs::write(&path, "0").map(|()| true),
                Err(e) => Err(e),
            };
            (path, outcome)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_all_setting_and_each_interfaces_own_let_a_redirect_out() {
        let paths: Vec<String> = settings(&["front", "back"])
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "/proc/sys/net/ipv4/conf/all/send_redirects",
                "/proc/sys/net/ipv4/conf/front/send_redirects",
                "/proc/sys/net/ipv4/conf/back/send_redirects",
            ]
        );
    }
}
