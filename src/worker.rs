//! Which of the per-core runtime threads (`server.runtime = "per_core"`) the
//! caller runs on.
//!
//! A task spawned by a request stays on its thread, so state whose work runs
//! in spawned tasks can be kept per thread to keep that work there, as the
//! Redis store does with its connections (`store::redis::conn` says why).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The largest number of per-core threads any server in this process runs.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Announce `count` per-core threads, before anything sizes per-thread state
/// by [`count`] (main does so before the store resolves its Redis master).
pub fn expect(count: usize) {
    COUNT.fetch_max(count, Ordering::Relaxed);
}

/// Mark the calling thread as per-core thread `index` (below the expected count).
pub fn enter(index: usize) {
    debug_assert!(index < count());
    INDEX.with(|i| i.set(Some(index)));
}

/// The calling thread's index, if it is a per-core runtime thread.
pub fn index() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// How many per-core threads there are (0 with the work-stealing runtime).
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_marked_threads_have_an_index() {
        assert_eq!(index(), None);
        expect(2);
        std::thread::spawn(|| {
            enter(1);
            assert_eq!(index(), Some(1));
            assert!(count() >= 2);
        })
        .join()
        .unwrap();
        // Marking another thread does not mark this one.
        assert_eq!(index(), None);
    }
}
