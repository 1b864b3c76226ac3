//! Network namespaces owned by a test.

use std::thread;

use nix::sched::{CloneFlags, unshare};

/// Runs `f` on a new thread inside a brand-new network namespace and returns
/// its result (re-raising its panic). The namespace lives only as long as
/// that thread and the children it spawns, so interfaces, routes and
/// neighbours a test creates vanish however the test ends.
pub fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let handle = thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET): tests need root");
        f()
    });
    handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
