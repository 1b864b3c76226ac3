//! The etcd thread: a small tokio runtime of its own that runs the etcd
//! calls. The daemon handles each request synchronously on its event loop
//! (data-plane writes never interleave), so a change waits for etcd here,
//! bounded by [`super::etcd::CALL_TIMEOUT`] per endpoint, while the
//! watcher and the keep-alives run beside it on the same thread.

use std::{future::Future, pin::Pin, sync::mpsc as std_mpsc, thread};

use tokio::sync::mpsc;

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

pub struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Worker {
    /// Starts the thread; it ends (cancelling what runs there) when the
    /// worker is dropped.
    pub fn spawn() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        thread::Builder::new().name("bg-lb-etcd".into()).spawn(move || {
            runtime.block_on(async move {
                while let Some(job) = queue.recv().await {
                    tokio::spawn(job);
                }
            });
        })?;
        Ok(Worker { jobs })
    }

    /// Runs `call` there and waits for its result; `None` if the thread is
    /// gone.
    pub fn wait<T: Send + 'static>(&self, call: impl Future<Output = T> + Send + 'static) -> Option<T> {
        let (tx, rx) = std_mpsc::sync_channel(1);
        self.detach(async move {
            let _ = tx.send(call.await);
        });
        rx.recv().ok()
    }

    /// Runs `task` there without waiting for it.
    pub fn detach(&self, task: impl Future<Output = ()> + Send + 'static) {
        let _ = self.jobs.send(Box::pin(task));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_runs_on_the_worker_and_its_result_comes_back() {
        let worker = Worker::spawn().unwrap();
        let name = worker
            .wait(async { thread::current().name().map(str::to_owned) })
            .unwrap();
        assert_eq!(name.as_deref(), Some("bg-lb-etcd"));
        let slept = worker.wait(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            7
        });
        assert_eq!(slept, Some(7));
    }
}
