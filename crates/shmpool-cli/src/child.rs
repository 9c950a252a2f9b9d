//! Forked child processes with a deadline, for the demo and the benchmarks.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

/// A forked child.
pub struct Forked(libc::pid_t);

/// Forks; the child runs `f` (a panic is exit code 101) and leaves with `_exit`, so no
/// destructor of the parent's runs twice.
///
/// Call only while the process has a single thread (the CLI forks before it starts any).
pub fn fork(f: impl FnOnce() -> i32) -> Result<Forked, String> {
    // SAFETY: the caller forks from a single-threaded process, so the child inherits no
    // lock held by another thread; the child never returns into the parent's code.
    match unsafe { libc::fork() } {
        -1 => Err("fork failed".into()),
        0 => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(Forked(pid)),
    }
}

impl Forked {
    /// `Some(exit code)` once ended (128 + signal for a death by signal).
    pub fn poll(&self) -> Result<Option<i32>, String> {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        match unsafe { libc::waitpid(self.0, &mut status, libc::WNOHANG) } {
            0 => Ok(None),
            r if r == self.0 && libc::WIFEXITED(status) => Ok(Some(libc::WEXITSTATUS(status))),
            r if r == self.0 => Ok(Some(128 + libc::WTERMSIG(status))),
            _ => Err("waitpid failed".into()),
        }
    }

    /// Kills the child (it may already be gone).
    pub fn kill(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0 as u32
    }
}

/// Waits for all children; kills them all and fails after `deadline`, or as soon as one
/// fails.
pub fn wait_all(children: &[Forked], deadline: Duration) -> Result<(), String> {
    let end = Instant::now() + deadline;
    let mut done = vec![false; children.len()];
    while done.iter().any(|d| !d) {
        for (c, d) in children.iter().zip(done.iter_mut()) {
            if !*d {
                match c.poll()? {
                    Some(0) => *d = true,
                    Some(code) => {
                        children.iter().for_each(Forked::kill);
                        return Err(format!("child {} failed with code {code}", c.pid()));
                    }
                    None => {}
                }
            }
        }
        if Instant::now() > end {
            children.iter().for_each(Forked::kill);
            return Err(format!("children still running after {deadline:?}; killed"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}
