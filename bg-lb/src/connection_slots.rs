//! Connection caps for the daemon's listeners (admin socket, metrics,
//! remote API), and [`serve_http`], which serves one HTTP connection. A
//! listener has a fixed number of slots; when all are taken, a new
//! connection takes the slot of the connection idle the longest, which is
//! closed, so connections held open without requests cannot lock operators
//! or scrapers out. Only when every connection is in the middle of a request
//! is the new one refused.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use hyper::{
    Request, Response,
    body::{Body, Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::Notify,
};

/// The slots of one listener.
#[derive(Clone)]
pub struct ConnectionSlots {
    capacity: usize,
    held: Arc<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    next_id: u64,
    connections: BTreeMap<u64, Connection>,
}

struct Connection {
    /// Since when it waits for a request; `None` while one is served.
    idle_since: Option<Instant>,
    evict: Arc<Notify>,
}

impl ConnectionSlots {
    pub fn new(capacity: usize) -> Self {
        ConnectionSlots {
            capacity,
            held: Arc::default(),
        }
    }

    /// A slot for a new connection: a free one, else the one of the
    /// connection idle the longest (told through [`Slot::evicted`]); `None`
    /// when every connection is busy with a request.
    pub fn admit(&self) -> Option<Slot> {
        let mut held = lock(&self.held);
        if held.connections.len() >= self.capacity {
            let (&oldest, _) = held
                .connections
                .iter()
                .filter_map(|(id, c)| Some((id, c.idle_since?)))
                // The first of equals in id order: the oldest connection.
                .min_by_key(|&(_, since)| since)?;
            let evicted = held.connections.remove(&oldest).expect("found above");
            evicted.evict.notify_one();
        }
        let id = held.next_id;
        held.next_id += 1;
        let evict = Arc::new(Notify::new());
        held.connections.insert(
            id,
            Connection {
                idle_since: Some(Instant::now()),
                evict: Arc::clone(&evict),
            },
        );
        Some(Slot(Arc::new(SlotInner {
            id,
            held: Arc::clone(&self.held),
            evict,
        })))
    }

    /// Connections holding a slot.
    pub fn in_use(&self) -> usize {
        lock(&self.held).connections.len()
    }
}

/// One connection's slot, freed when the last clone drops.
#[derive(Clone)]
pub struct Slot(Arc<SlotInner>);

struct SlotInner {
    id: u64,
    held: Arc<Mutex<Held>>,
    evict: Arc<Notify>,
}

impl Slot {
    /// Marks the connection busy until the guard drops: a connection serving
    /// a request is never evicted.
    pub fn busy(&self) -> Busy {
        self.set_idle(false);
        Busy(self.clone())
    }

    /// Resolves once another connection took this slot: close the connection.
    pub async fn evicted(&self) {
        self.0.evict.notified().await;
    }

    fn set_idle(&self, idle: bool) {
        if let Some(connection) = lock(&self.0.held).connections.get_mut(&self.0.id) {
            connection.idle_since = idle.then(Instant::now);
        }
    }
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        lock(&self.held).connections.remove(&self.id);
    }
}

/// See [`Slot::busy`].
pub struct Busy(Slot);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.set_idle(true);
    }
}

/// The map stays consistent whatever a panicking holder did: every change
/// is one insert, update or remove.
fn lock(held: &Mutex<Held>) -> MutexGuard<'_, Held> {
    held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Serves one HTTP/1.1 connection of an HTTP listener (metrics, remote API)
/// in `slot`, answering each request with `handler`, until the client
/// closes it, it idles past `idle_timeout` (no complete request head in
/// that time, counted from the connect or the last response), or a new
/// connection takes its slot. A connection streaming a response body (the
/// console's events) counts as idle once the head is sent: a full listener
/// may close it for a new connection, and the console reconnects.
pub async fn serve_http<S, H, F, B>(
    stream: S,
    peer: SocketAddr,
    slot: Slot,
    idle_timeout: Duration,
    listener: &'static str,
    handler: H,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let serving = slot.clone();
    let service = service_fn(move |request| {
        let busy = serving.busy();
        let response = handler(request);
        async move {
            let response = response.await;
            drop(busy);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "{listener} connection ended with an error");
        },
        () = slot.evicted() => tracing::debug!(%peer, "idle {listener} connection closed for a new one"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn evicted_now(slot: &Slot) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(1), slot.evicted())
                .await
                .is_ok()
        })
    }

    #[test]
    fn a_full_listener_closes_the_longest_idle_connection_for_a_new_one() {
        let slots = ConnectionSlots::new(3);
        let held: Vec<Slot> = (0..3).map(|_| slots.admit().expect("free slot")).collect();
        let _busy = held[0].busy();
        let fourth = slots.admit().expect("an idle connection makes room");
        assert_eq!(slots.in_use(), 3);
        assert!(!evicted_now(&held[0]), "busy: never evicted");
        assert!(evicted_now(&held[1]), "idle the longest");
        assert!(!evicted_now(&held[2]));
        assert!(!evicted_now(&fourth));
    }

    #[test]
    fn a_new_connection_is_refused_only_when_every_connection_is_busy() {
        let slots = ConnectionSlots::new(2);
        let held: Vec<Slot> = (0..2).map(|_| slots.admit().unwrap()).collect();
        let busy: Vec<Busy> = held.iter().map(Slot::busy).collect();
        assert!(slots.admit().is_none());
        drop(busy);
        assert!(slots.admit().is_some(), "idle again after the request");
    }

    #[test]
    fn a_closed_connection_frees_its_slot_once_every_clone_is_gone() {
        let slots = ConnectionSlots::new(1);
        let slot = slots.admit().unwrap();
        let clone = slot.clone();
        drop(slot);
        assert_eq!(slots.in_use(), 1);
        drop(clone);
        assert_eq!(slots.in_use(), 0);
        let next = slots.admit().unwrap();
        assert!(!evicted_now(&next), "a free slot evicts nobody");
    }
}
