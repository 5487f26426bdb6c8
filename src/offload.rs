//! A fixed pool of threads for CPU-heavy work that must not run on a runtime
//! thread: compressing large responses and making large copies of entries.
//!
//! Not tokio's blocking pool: that one grows a thread per concurrent job (up
//! to 512 per runtime), and under a miss-heavy load of 1 KB–2 MB results each
//! of those threads kept its own allocator heap of freed multi-megabyte
//! buffers. The process held ~100 MiB more in a 10-minute soak (350 against
//! 240 MiB) with eight such threads. Here the number of threads is the number
//! of runtime workers: the same CPU parallelism compression had when it ran
//! inline, without holding up the hits queued on a runtime thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

/// Bodies from this size on are compressed, or copied into another encoding,
/// on these threads. zstd plus the gzip copy of a 2 MB result take tens of
/// ms, and a runtime thread held that long delays every hit queued on it
/// (with `server.runtime = "per_core"` no other thread takes them over).
/// Below it, the hand-over would cost more than the work.
pub const MIN_BYTES: usize = 64 * 1024;

type Job = Box<dyn FnOnce() + Send>;

/// Threads that run closures and hand their results back to async callers.
/// The threads end when the pool is dropped.
pub struct Offload {
    jobs: Sender<Job>,
    /// Joined only by the tests; the threads end on their own once `jobs` is dropped.
    #[cfg_attr(not(test), allow(dead_code))]
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Offload {
    /// `threads` threads (at least one), named `chartcache-cpuN`.
    pub fn new(threads: usize) -> std::io::Result<Offload> {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let threads = (0..threads.max(1))
            .map(|i| {
                let queue = queue.clone();
                std::thread::Builder::new()
                    .name(format!("chartcache-cpu{i}"))
                    .spawn(move || work(&queue))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Offload { jobs, threads })
    }

    /// Run `f` on a pool thread and wait for its result; `None` if it panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if let Ok(v) = catch_unwind(AssertUnwindSafe(f)) {
                let _ = tx.send(v);
            }
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }
}

fn work(queue: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job.
        let job = match queue.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return, // the pool was dropped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or("").to_string()
    }

    #[tokio::test]
    async fn runs_on_its_own_threads_and_returns_results() {
        let pool = Offload::new(2).unwrap();
        let name = pool.run(thread_name).await.unwrap();
        assert!(name.starts_with("chartcache-cpu"), "{name}");
        assert_ne!(name, thread_name());
        let sums: Vec<u64> = futures_util::future::join_all(
            (0..20u64).map(|i| pool.run(move || (0..=i).sum::<u64>())),
        )
        .await
        .into_iter()
        .map(Option::unwrap)
        .collect();
        assert_eq!(sums[19], 190);
    }

    #[tokio::test]
    async fn a_panicking_job_gives_none_and_the_pool_keeps_working() {
        let pool = Offload::new(1).unwrap();
        assert_eq!(pool.run(|| -> u8 { panic!("job failed") }).await, None);
        assert_eq!(pool.run(|| 7).await, Some(7));
    }

    #[test]
    fn the_threads_end_with_the_pool() {
        let Offload { jobs, threads } = Offload::new(2).unwrap();
        drop(jobs);
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for t in threads {
                t.join().unwrap();
            }
            let _ = done.send(());
        });
        ended
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("pool threads still running after the pool was dropped");
    }
}
