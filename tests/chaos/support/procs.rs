//! Child processes started by a scenario: each is signalled and killed by its
//! own pid (never by name) and reaped when its handle is dropped, also when a
//! scenario panics. Temporary directories are removed the same way.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// A free loopback port (bound once by the OS, then released). Never 6379.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind port 0");
        let p = l.local_addr().unwrap().port();
        if p != 6379 {
            return p;
        }
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("chartcache-chaos-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One child process; SIGKILLed by pid and reaped on drop.
pub struct Proc {
    child: Option<Child>,
    pub what: String,
}

impl Proc {
    /// Spawn `cmd` with stdin closed and stdout/stderr appended to `log`.
    pub fn spawn(what: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        Proc {
            child: Some(child),
            what: what.to_string(),
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Send `sig` to this process only (by pid).
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) with our own child's pid touches no memory.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn cont(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A stopped process dies of SIGKILL too; SIGCONT first keeps it simple.
            // SAFETY: as in `signal`.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Has it exited? Returns its exit code (or -signal) if so.
    pub fn exited(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => Some(exit_code(st)),
            _ => None,
        }
    }

    /// Wait at most `secs` for the process to exit; its exit code, or None.
    pub fn wait_exit(&mut self, secs: f64) -> Option<i32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
        while std::time::Instant::now() < deadline {
            if let Some(code) = self.exited() {
                self.child = None;
                return Some(code);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// Resident memory (VmRSS) and its peak (VmHWM), in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<(u64, u64)> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }
}

fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| -st.signal().unwrap_or(0))
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
