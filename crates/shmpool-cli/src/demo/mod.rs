//! `shmpool demo`: four worker processes share one segment — two forked, one unrelated
//! process that attaches by name, one unrelated process that receives the descriptor
//! over a Unix socket. Two write a log of checksummed records, growing the segment as
//! they go; two read every record and verify it. The parent prints what each did.

mod log;

use crate::units::human;
use log::{Field, How, Role};
use shmpool::segment::Access;
use shmpool::{Segment, SegmentOptions};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long the whole demo may take before its workers are killed.
const DEADLINE: Duration = Duration::from_secs(20);

/// A worker process, forked or spawned.
enum Proc {
    Forked(libc::pid_t),
    Spawned(Child),
}

impl Proc {
    /// `Some(exit code)` once it has ended; a death by signal is code 128 + signal.
    fn poll(&mut self) -> Result<Option<i32>, String> {
        match self {
            Proc::Spawned(c) => Ok(c.try_wait().map_err(|e| e.to_string())?.map(|s| {
                use std::os::unix::process::ExitStatusExt;
                s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
            })),
            Proc::Forked(pid) => {
                let mut status = 0;
                // SAFETY: waitpid on our own child with a valid status pointer.
                match unsafe { libc::waitpid(*pid, &mut status, libc::WNOHANG) } {
                    0 => Ok(None),
                    r if r == *pid && libc::WIFEXITED(status) => Ok(Some(libc::WEXITSTATUS(status))),
                    r if r == *pid => Ok(Some(128 + libc::WTERMSIG(status))),
                    _ => Err("waitpid failed".into()),
                }
            }
        }
    }

    fn kill(&mut self) {
        match self {
            Proc::Spawned(c) => drop(c.kill()),
            // SAFETY: signalling our own child.
            Proc::Forked(pid) => drop(unsafe { libc::kill(*pid, libc::SIGKILL) }),
        }
    }
}

/// Forks a worker that runs `run_worker` in the child and leaves with `_exit`.
fn fork_worker(seg: &Segment, slot: u64, role: Role) -> Result<Proc, String> {
    // SAFETY: the demo forks from its main thread before it starts any other thread, so
    // the child inherits no held lock; the child leaves through `_exit`.
    match unsafe { libc::fork() } {
        -1 => Err("fork failed".into()),
        0 => {
            // A panic must not unwind into the parent's code (and its cleanup) in the child.
            let run = std::panic::AssertUnwindSafe(|| log::run_worker(seg, slot, role, How::Fork));
            let code = match std::panic::catch_unwind(run) {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => {
                    eprintln!("shmpool demo worker {slot}: {e}");
                    1
                }
                Err(_) => 101,
            };
            // SAFETY: ends the child without running the parent's destructors (which
            // would unlink the demo segment).
            unsafe { libc::_exit(code) }
        }
        pid => Ok(Proc::Forked(pid)),
    }
}

fn spawn_worker(args: &[&str]) -> Result<Proc, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    Command::new(exe)
        .arg("__demo-worker")
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .map(Proc::Spawned)
        .map_err(|e| format!("spawn worker: {e}"))
}

/// Entry of an unrelated worker process (`shmpool __demo-worker`).
pub fn worker_main(name: Option<&str>, socket: Option<&str>, slot: u64, reader: bool) -> Result<(), String> {
    let (seg, how) = match (name, socket) {
        (Some(name), _) => {
            (Segment::open_shm(name, Access::ReadWrite).map_err(|e| e.to_string())?, How::Name)
        }
        (None, Some(path)) => {
            let conn = UnixStream::connect(path).map_err(|e| format!("connect {path}: {e}"))?;
            (Segment::receive(&conn, Access::ReadWrite).map_err(|e| e.to_string())?, How::Fd)
        }
        (None, None) => return Err("a worker needs --name or --socket".into()),
    };
    log::run_worker(&seg, slot, if reader { Role::Reader } else { Role::Writer }, how)
}

/// Removes the demo's shm name and socket when the demo ends, however it ends.
struct Cleanup(String, PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Segment::unlink_shm(&self.0);
        let _ = std::fs::remove_file(&self.1);
    }
}

/// Runs the demo with `per_writer` records per writer and prints the report.
pub fn run(per_writer: u64) -> Result<(), String> {
    let pid = std::process::id();
    let name = format!("shmpool-demo-{pid}");
    let sock_path = std::env::temp_dir().join(format!("shmpool-demo-{pid}.sock"));
    let _cleanup = Cleanup(name.clone(), sock_path.clone());
    let max = log::bytes_for(2 * per_writer).next_multiple_of(log::GROW_STEP) + log::GROW_STEP;
    let seg = SegmentOptions::new()
        .size(log::GROW_STEP)
        .max_size(max)
        .create_shm(&name)
        .map_err(|e| format!("create segment: {e}"))?;
    let initial = seg.committed();
    log::init(&seg, 2, per_writer);

    let listener =
        UnixListener::bind(&sock_path).map_err(|e| format!("bind {}: {e}", sock_path.display()))?;
    let mut procs = vec![fork_worker(&seg, 0, Role::Writer)?, fork_worker(&seg, 1, Role::Reader)?];
    procs.push(spawn_worker(&["--name", &name, "--slot", "2", "--reader"])?);
    procs.push(spawn_worker(&["--socket", sock_path.to_str().unwrap_or_default(), "--slot", "3"])?);
    let outcome = hand_fd_and_start(&seg, &listener, &mut procs);
    let codes = outcome.and_then(|()| wait_all(&mut procs));
    if codes.is_err() {
        procs.iter_mut().for_each(Proc::kill);
    }
    let (text, ok) = report(&seg, &name, initial, &codes?);
    crate::print_out(&text)?;
    if ok {
        Ok(())
    } else {
        Err("demo failed: a worker did not finish or read bad data".into())
    }
}

fn hand_fd_and_start(seg: &Segment, listener: &UnixListener, procs: &mut [Proc]) -> Result<(), String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + DEADLINE;
    let conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                if let Some(code) = procs[3].poll()? {
                    return Err(format!("the fd-receiving worker exited early ({code})"));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    seg.send_to(&conn).map_err(|e| e.to_string())?;
    while log::attached(seg) < procs.len() as u64 {
        if Instant::now() > deadline {
            return Err("workers did not attach in time".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    log::go(seg);
    Ok(())
}

fn wait_all(procs: &mut [Proc]) -> Result<Vec<i32>, String> {
    let deadline = Instant::now() + DEADLINE;
    let mut codes = vec![None; procs.len()];
    while codes.iter().any(Option::is_none) {
        for (p, c) in procs.iter_mut().zip(codes.iter_mut()) {
            if c.is_none() {
                *c = p.poll()?;
            }
        }
        if Instant::now() > deadline {
            return Err(format!("workers still running after {DEADLINE:?}; killed"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(codes.into_iter().map(|c| c.expect("all ended")).collect())
}

/// The report, and whether every worker finished and every record checked out.
fn report(seg: &Segment, name: &str, initial: u64, codes: &[i32]) -> (String, bool) {
    let get = |slot: u64, f: Field| log::slot_field(seg, slot, f).load(Ordering::Acquire);
    let mut out = format!(
        "shmpool demo: {} worker processes shared /{name} ({}), no copies between them\n",
        codes.len(),
        seg.kind()
    );
    out.push_str(&format!(
        "  the segment grew {} -> {} while they ran ({} reserved)\n\n",
        human(initial),
        human(seg.committed()),
        human(seg.reserved())
    ));
    out.push_str(
        "  worker  pid      attached by                role    records   data       MiB/s   notes\n",
    );
    let mut ok = true;
    let mut written = 0;
    for (slot, code) in codes.iter().enumerate() {
        let slot = slot as u64;
        let done = get(slot, Field::Done) == 1 && *code == 0;
        ok &= done && get(slot, Field::Bad) == 0;
        let how = match get(slot, Field::How) {
            1 => "fork".to_string(),
            2 => format!("name /{name}"),
            _ => "fd over a Unix socket".to_string(),
        };
        let ms = |ns: u64| ns as f64 / 1e6;
        let (role, notes) = if get(slot, Field::Role) == Role::Writer as u64 {
            written += get(slot, Field::Records);
            ("writer", format!("asked the segment to grow {}x", get(slot, Field::Grows)))
        } else {
            let (p50, p99) = (ms(get(slot, Field::P50Ns)), ms(get(slot, Field::P99Ns)));
            ("reader", format!("publish-to-read delay p50 {p50:.2} ms, p99 {p99:.2} ms"))
        };
        let secs = get(slot, Field::ElapsedNs) as f64 / 1e9;
        let bytes = get(slot, Field::Bytes);
        let rate = if secs > 0.0 { bytes as f64 / (1 << 20) as f64 / secs } else { 0.0 };
        out.push_str(&format!(
            "  {:<7} {:<8} {how:<26} {role:<7} {:<9} {:<10} {rate:<7.0} {notes}\n",
            slot + 1,
            get(slot, Field::Pid),
            get(slot, Field::Records),
            human(bytes),
        ));
        if !done {
            out.push_str(&format!("          ^ worker failed (exit code {code})\n"));
        }
        let bad = get(slot, Field::Bad);
        if bad > 0 {
            out.push_str(&format!("          ^ {bad} records did not match their checksum\n"));
        }
    }
    out.push_str(&if ok {
        format!("\n  all {written} records were verified byte for byte by both readers\n")
    } else {
        "\n  FAILED: see the workers marked above\n".to_string()
    });
    (out, ok)
}
