//! The console's live view: a server-sent event stream of the daemon's
//! `status` reply, taken through the admin socket's path every
//! [`EVERY`], for as long as the page reads it.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::body::{Body, Bytes, Frame};
use tokio::{sync::mpsc, time::MissedTickBehavior};

use crate::{
    daemon::server::{Job, submit},
    protocol::Reply,
};

/// How often the page gets a new status: it is at most this far behind.
pub const EVERY: Duration = Duration::from_millis(500);

/// A `text/event-stream` body: one `status` event per [`EVERY`]. Dropping
/// it (the page went away) stops the task that asks the daemon.
pub struct EventStream {
    events: mpsc::Receiver<Bytes>,
}

impl EventStream {
    /// Starts asking the daemon through `jobs`.
    pub fn start(jobs: mpsc::Sender<Job>) -> Self {
        let (tx, events) = mpsc::channel(1);
        let started = Instant::now();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(EVERY);
            every.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let reply = submit(&jobs, r#"{"cmd":"status"}"#.to_owned()).await;
                if tx.send(event(started.elapsed(), &reply)).await.is_err() {
                    return;
                }
            }
        });
        EventStream { events }
    }
}

/// One event: the reply with the stream's clock, which the page divides
/// counter deltas by to show rates.
fn event(at: Duration, reply: &Reply) -> Bytes {
    let data = serde_json::json!({ "at": at.as_secs_f64(), "reply": reply });
    Bytes::from(format!("event: status\ndata: {data}\n\n"))
}

impl Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.events.poll_recv(cx).map(|event| event.map(|e| Ok(Frame::data(e))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_data_line_of_json_ended_by_a_blank_line() {
        let bytes = event(Duration::from_millis(1500), &Reply::error("line\nbreak"));
        let text = std::str::from_utf8(&bytes).unwrap();
        let data = text.strip_prefix("event: status\ndata: ").unwrap();
        let data = data.strip_suffix("\n\n").unwrap();
        assert!(!data.contains('\n'), "a newline would end the data line: {text}");
        let value: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(value["at"], 1.5);
        assert_eq!(value["reply"]["error"], "line\nbreak");
    }
}
