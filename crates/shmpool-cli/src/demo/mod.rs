//! `shmpool demo`: four worker processes share one heap — two forked, one unrelated
//! process that attaches by name, one unrelated process that receives the descriptor over
//! a Unix socket. Two writers allocate records of random sizes and publish them; two
//! readers verify every record, and the last reader of each frees it. The segment grows
//! as the heap needs; at the end the heap's invariant walk runs and the parent reports.

mod log;

use crate::child::{self, Forked};
use crate::units::human;
use log::{Field, How, Log, Role};
use shmpool::heap::Heap;
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
    Forked(Forked),
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
            Proc::Forked(f) => f.poll(),
        }
    }

    fn kill(&mut self) {
        match self {
            Proc::Spawned(c) => drop(c.kill()),
            Proc::Forked(f) => f.kill(),
        }
    }
}

/// Forks a worker that runs on the heap it inherits.
fn fork_worker(heap: &Heap, slot: u64, role: Role) -> Result<Proc, String> {
    child::fork(|| match log::run_worker(heap, slot, role, How::Fork) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shmpool demo worker {slot}: {e}");
            1
        }
    })
    .map(Proc::Forked)
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
    let heap = Heap::attach(seg).map_err(|e| e.to_string())?;
    log::run_worker(&heap, slot, if reader { Role::Reader } else { Role::Writer }, how)
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
    let seg = SegmentOptions::new()
        .size(1 << 20)
        .max_size(1 << 30)
        .create_shm(&name)
        .map_err(|e| format!("create segment: {e}"))?;
    let heap = Heap::create(seg).map_err(|e| format!("create heap: {e}"))?;
    let log = Log::create(&heap, 2, 2, per_writer)?;
    let initial = heap.segment().committed();

    let listener =
        UnixListener::bind(&sock_path).map_err(|e| format!("bind {}: {e}", sock_path.display()))?;
    let mut procs = vec![fork_worker(&heap, 0, Role::Writer)?, fork_worker(&heap, 1, Role::Reader)?];
    procs.push(spawn_worker(&["--name", &name, "--slot", "2", "--reader"])?);
    procs.push(spawn_worker(&["--socket", sock_path.to_str().unwrap_or_default(), "--slot", "3"])?);
    let started = Instant::now();
    let outcome = hand_fd_and_start(&heap, &log, &listener, &mut procs);
    let codes = outcome.and_then(|()| wait_all(&mut procs));
    if codes.is_err() {
        procs.iter_mut().for_each(Proc::kill);
    }
    let codes = codes?;
    let wall = started.elapsed();
    let (text, ok) = report(&heap, &log, &name, initial, &codes, wall);
    crate::print_out(&text)?;
    if ok {
        Ok(())
    } else {
        Err("demo failed: a worker did not finish, read bad data, or the heap is inconsistent".into())
    }
}

fn hand_fd_and_start(
    heap: &Heap,
    log: &Log<'_>,
    listener: &UnixListener,
    procs: &mut [Proc],
) -> Result<(), String> {
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
    heap.segment().send_to(&conn).map_err(|e| e.to_string())?;
    while log.attached() < procs.len() as u64 {
        if Instant::now() > deadline {
            return Err("workers did not attach in time".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    log.go();
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

/// The report, and whether every worker finished, every record checked out and the heap
/// passed its invariant walk.
fn report(
    heap: &Heap,
    log: &Log<'_>,
    name: &str,
    initial: u64,
    codes: &[i32],
    wall: Duration,
) -> (String, bool) {
    let get = |slot: u64, f: Field| log.field(slot, f).load(Ordering::Acquire);
    let mut out = format!(
        "shmpool demo: {} worker processes shared one heap in /{name} for {:.0} ms\n",
        codes.len(),
        wall.as_secs_f64() * 1000.0
    );
    out.push_str(&format!(
        "  the heap grew the segment {} -> {} as the writers allocated\n\n",
        human(initial),
        human(heap.segment().committed())
    ));
    out.push_str(
        "  worker  pid      attached by                role    records   data       MiB/s   notes\n",
    );
    let mut ok = true;
    let (mut written, mut freed) = (0, 0);
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
            ("writer", "allocated each record from the heap".to_string())
        } else {
            freed += get(slot, Field::Freed);
            let (p50, p99) = (ms(get(slot, Field::P50Ns)), ms(get(slot, Field::P99Ns)));
            (
                "reader",
                format!(
                    "freed {} (remote frees); delay p50 {p50:.2} ms, p99 {p99:.2} ms",
                    get(slot, Field::Freed)
                ),
            )
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
    ok &= freed == written;
    let walk = heap.check();
    out.push_str(&format!(
        "\n  {written} records of 256 B to 16 KiB were verified byte for byte by both readers and all {freed} freed\n"
    ));
    match walk {
        Ok(r) => out.push_str(&format!(
            "  heap invariant walk: clean ({} slabs; {} blocks still allocated: control block, slot array, root)\n",
            r.slabs,
            r.slab_blocks - r.pending_remote
        )),
        Err(e) => {
            ok = false;
            out.push_str(&format!("  heap invariant walk FAILED: {e}\n"));
        }
    }
    if !ok {
        out.push_str("\n  FAILED: see above\n");
    }
    (out, ok)
}
