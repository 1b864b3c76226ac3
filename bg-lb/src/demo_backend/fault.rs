//! Fault injection: resetting a share of accepted HTTP connections instead of
//! serving them, so rollout tests can watch a bad release fail its way out.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::net::TcpStream;

/// Resets the connection: SO_LINGER 0 turns the close into an RST, so the client
/// sees "connection reset" rather than a clean (and retryable-looking) EOF.
pub(super) fn reset(stream: TcpStream, peer: SocketAddr) {
    // `set_zero_linger` is tokio's non-deprecated `set_linger(Some(ZERO))`;
    // a zero linger never blocks on close.
    if let Err(e) = stream.set_zero_linger() {
        tracing::warn!(%peer, error = %e, "cannot set SO_LINGER 0; closing normally");
    }
    tracing::debug!(%peer, "fault injection: resetting connection");
    drop(stream);
}

/// xorshift64: plenty for picking which connections to reset, and no crate.
pub(super) struct XorShift64(u64);

impl XorShift64 {
    /// Seeds from the clock and a process-wide counter, so backends started
    /// in the same instant (tests) still draw different sequences.
    pub(super) fn seeded() -> Self {
        static SEEDS: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        let counter = SEEDS.fetch_add(1, Ordering::Relaxed);
        // The golden-ratio multiply spreads consecutive counters over all the
        // bits; `| 1` because an all-zero state would stay zero forever.
        XorShift64((nanos ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// True with probability `percent`/100: always at 100, never at 0.
    pub(super) fn chance(&mut self, percent: u8) -> bool {
        self.next() % 100 < u64::from(percent)
    }
}

#[cfg(test)]
mod tests {
    use hyper::{Method, StatusCode};

    use super::*;
    use crate::demo_backend::{
        Role,
        test_client::{Backend, call, get},
    };

    #[tokio::test]
    async fn fail_percent_100_resets_every_connection() {
        let backend = Backend::start(Role::Live, 100).await;
        for _ in 0..20 {
            if let Ok(reply) = call(backend.addr, Method::GET, "/live").await {
                panic!("got a {} through a connection that should be reset", reply.status);
            }
        }
    }

    #[tokio::test]
    async fn fail_percent_0_never_resets() {
        let backend = Backend::start(Role::Live, 0).await;
        for _ in 0..50 {
            assert_eq!(get(backend.addr, "/live").await.status, StatusCode::OK);
        }
    }

    #[test]
    fn chance_is_never_at_0_always_at_100_and_roughly_fair_between() {
        let mut rng = XorShift64::seeded();
        assert!((0..10_000).all(|_| !rng.chance(0)));
        assert!((0..10_000).all(|_| rng.chance(100)));
        let hits = (0..10_000).filter(|_| rng.chance(30)).count();
        assert!((2_500..3_500).contains(&hits), "{hits} of 10000 at 30%");
    }
}
