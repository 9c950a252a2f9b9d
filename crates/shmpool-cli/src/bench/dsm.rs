//! The distributed mode beside raw TCP, in one run. This process is node 0 of a
//! two-node region; node 1 is a child process (`shmpool __dsm-bench-node`), joined over
//! loopback TCP. Every access is a plain load or store on the mapped region: the
//! figures include the page fault, userfaultfd, the protocol and the transfer.
//!
//! - `tcp`: the round trip of an 8-byte request and reply over loopback TCP
//!   (`TCP_NODELAY`) between the same two processes (node 1 runs an echo thread), the
//!   reference (`unix` for the runs over Unix sockets: the same over a Unix socket);
//!   both ends block in `read`;
//! - `tcp-poll`: the same round trip with the requester polling for the reply
//!   (non-blocking reads, yielding between them), as a thread waiting for a page does:
//!   its CPU does not go idle, which spares the wake-up of an idle CPU (dear in a VM:
//!   this reference measured a third of the other over TCP, a seventh over Unix
//!   sockets). The read and upgrade lines give their ratio to both (`vs_tcp_rtt`,
//!   `vs_tcp_poll_rtt`);
//! - `dsm-read`: node 1 writes a page, node 0 reads it (a missing fault: recall from
//!   node 1, grant with the bytes), p50 and p99; pages read in an order with no two
//!   neighbours in a row, so that no read-ahead starts;
//! - `dsm-local-upgrade`: node 0 then writes the page it read, which it holds
//!   Exclusive (node 1 had written it, so it moved whole): a write-protect fault that
//!   sends no message;
//! - `dsm-upgrade`: node 1 reads the pages too (both hold them Shared), and node 0
//!   writes each again (a write-protect fault: node 1's copy invalidated, a grant
//!   without bytes);
//! - `dsm-pingpong`: the two nodes write one word alternately, each waiting to see the
//!   other's write: page transfers per second;
//! - `dsm-seqread`: node 1 writes a whole range (256 MiB at the default `--handoffs`),
//!   node 0 reads it through, page after page, with the default read-ahead (32 pages):
//!   MiB/s.
//!
//! Each set of lines is measured three times: faults caught with userfaultfd by a
//! handler thread (no suffix), by the faulting thread on SIGBUS (`-sigbus`), and by page
//! protection (`-signals`, whose sequential range is 48 MiB at most); and the three again
//! with the nodes linked by Unix sockets instead of TCP (`-unix`, after the capture's
//! suffix), each against the Unix socket's own round trips (`vs_unix_rtt`,
//! `vs_unix_poll_rtt`). Then SIGBUS delivery once more over each link, with busy links
//! (`-sigbus-busy`): each link's reader polls 50 µs for the next message before it
//! sleeps (`RegionOptions::link_poll`), which spares node 1's reader its wake-up.
//!
//! Each node keeps to a CPU of its own, as on two hosts: node 0 (this thread, and the
//! threads its region starts) to the first CPU of this process's affinity mask, node 1
//! to the second. Left to the scheduler, the two processes share a CPU in some
//! repetitions and not in others, and the reference round trip moved by up to 5×
//! between them. On one CPU, or with `SHMPOOL_BENCH_NO_PIN` set (to anything), the
//! nodes run anywhere (the reference line says which).
//!
//! The nodes talk through control words in the region itself: node 0 posts an order
//! in page 0, node 1 acknowledges it in page 1.

use super::{Plan, Spread};
use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
use shmpool_dsm::region::{FaultCapture, Region, RegionOptions};
use shmpool_dsm::transport::Peer;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
/// Node 0's order: sequence << 32 | operation << 24 | argument.
const ORDER: usize = 8;
/// Node 1's acknowledgement: the order it carried out.
const ACK: usize = PAGE + 8;
/// The ping-pong word.
const PING: usize = 2 * PAGE;
/// The pages read and upgraded.
const FIRST: usize = 16;
/// The sequential range's first page (at 16 MiB).
const SEQ: usize = 4096;

/// How long the link readers of the `-busy` runs poll before they sleep
/// (`RegionOptions::link_poll`).
const BUSY_LINKS: Duration = Duration::from_micros(50);

const OP_WRITE: u64 = 1;
const OP_PINGPONG: u64 = 2;
const OP_FILL: u64 = 3;
const OP_QUIT: u64 = 4;
const OP_READ: u64 = 5;

fn word(region: &Region, at: usize) -> &AtomicU64 {
    region.atomic_u64(at).expect("a word of the region")
}

/// `n` free loopback ports (bound and released), or `n` Unix socket paths in `dir`.
fn free_peers(n: usize, dir: Option<&crate::dsm::SocketDir>) -> Result<Vec<Peer>, String> {
    (0..n)
        .map(|i| match dir {
            Some(d) => Ok(Peer::Unix(d.join(&format!("node-{i}.sock")))),
            None => TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(Peer::Tcp)
                .map_err(|e| e.to_string()),
        })
        .collect()
}

/// The reference's connection: TCP or a Unix socket.
trait Duplex: Read + Write + Send {
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()>;
}
impl Duplex for TcpStream {
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        TcpStream::set_nonblocking(self, on)
    }
}
impl Duplex for UnixStream {
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        UnixStream::set_nonblocking(self, on)
    }
}

fn percentile(v: &mut [u64], p: usize) -> f64 {
    v.sort_unstable();
    v[(v.len() * p / 100).min(v.len() - 1)] as f64
}

/// p50 of `n` 8-byte request/reply round trips over `c`, a loopback TCP connection (or
/// Unix socket) to node 1's echo thread: between the same two processes as the region's
/// messages. The requester blocks in `read` for each reply, or, with `poll`, reads
/// without blocking and yields until the reply is there.
fn round_trip(c: &mut dyn Duplex, n: usize, poll: bool) -> Result<f64, String> {
    c.set_nonblocking(poll).map_err(|e| e.to_string())?;
    let timed = (0..n)
        .map(|i| {
            let s = Instant::now();
            let mut b = (i as u64).to_le_bytes();
            exchange(c, &mut b)?;
            Ok(s.elapsed().as_nanos() as u64)
        })
        .collect::<Result<Vec<u64>, String>>();
    // Blocking again, whatever happened: the connection serves the next round trips.
    let reset = c.set_nonblocking(false).map_err(|e| e.to_string());
    let mut t = timed?;
    reset?;
    Ok(percentile(&mut t, 50))
}

/// Sends `b` and reads the reply into it, yielding while the connection (non-blocking)
/// would block.
fn exchange(c: &mut dyn Duplex, b: &mut [u8; 8]) -> Result<(), String> {
    let (mut sent, mut got) = (0, 0);
    while got < b.len() {
        let r = if sent < b.len() { c.write(&b[sent..]) } else { c.read(&mut b[got..]) };
        match r {
            Ok(0) => return Err("node 1's echo closed".into()),
            Ok(k) if sent < b.len() => sent += k,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Node 1's echo of the reference: 8 bytes back for 8 bytes, until closed.
fn echo(at: Peer) {
    let s: std::io::Result<Box<dyn Duplex>> = match &at {
        Peer::Tcp(a) => TcpStream::connect(a).and_then(|s| s.set_nodelay(true).map(|()| Box::new(s) as _)),
        Peer::Unix(p) => UnixStream::connect(p).map(|s| Box::new(s) as _),
    };
    let Ok(mut s) = s else { return };
    let mut b = [0u8; 8];
    while s.read_exact(&mut b).is_ok() {
        if s.write_all(&b).is_err() {
            break;
        }
    }
}

/// Node 0's side: orders for node 1.
struct Orders {
    region: Region,
    seq: u64,
}

impl Orders {
    /// Has node 1 carry out `op` with `arg`, and waits for it.
    fn order(&mut self, op: u64, arg: u64) -> Result<(), String> {
        self.seq += 1;
        let order = self.seq << 32 | op << 24 | arg;
        word(&self.region, ORDER).store(order, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(120);
        while word(&self.region, ACK).load(Ordering::SeqCst) != order {
            if Instant::now() > deadline {
                return Err(format!("node 1 did not carry out order {op} in 120 s"));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(())
    }

    /// Node 1 writes pages `FIRST..FIRST + n`; node 0 reads each (timed: a remote read,
    /// which moves the page here, Exclusive, as node 1 wrote it), writes each (timed: a
    /// local upgrade, no message); node 1 then reads them all (both hold them Shared),
    /// and node 0 writes each again (timed: an upgrade that invalidates node 1's copy).
    /// The three times, ns.
    fn reads_and_upgrades(&mut self, n: usize) -> Result<[Vec<u64>; 3], String> {
        self.order(OP_WRITE, n as u64)?;
        let stamp = self.seq;
        let mut reads = Vec::with_capacity(n);
        // Every other page, then the rest: no two reads in a row are of neighbours, so
        // each is one remote fault (in order, the read-ahead would bring most of them
        // before they are touched).
        let apart = (FIRST..FIRST + n).step_by(2).chain((FIRST + 1..FIRST + n).step_by(2));
        for p in apart {
            let w = word(&self.region, p * PAGE);
            let s = Instant::now();
            let v = w.load(Ordering::Relaxed);
            reads.push(s.elapsed().as_nanos() as u64);
            if v != stamp {
                return Err(format!("page {p} read {v}, node 1 wrote {stamp}"));
            }
        }
        let writes = |region: &Region, at: usize| -> Vec<u64> {
            (FIRST..FIRST + n)
                .map(|p| {
                    let w = word(region, p * PAGE + at);
                    let s = Instant::now();
                    w.store(stamp, Ordering::Relaxed);
                    s.elapsed().as_nanos() as u64
                })
                .collect()
        };
        let local = writes(&self.region, 8);
        self.order(OP_READ, n as u64)?;
        let remote = writes(&self.region, 16);
        Ok([reads, local, remote])
    }

    /// `n` round trips of the ping-pong word: transfers per second.
    fn ping_pong(&mut self, n: u64) -> Result<f64, String> {
        word(&self.region, PING).store(0, Ordering::SeqCst);
        // Node 1 starts its half and acknowledges at once; then both play.
        self.order(OP_PINGPONG, n)?;
        let w = word(&self.region, PING);
        let start = Instant::now();
        for k in 0..n {
            while w.load(Ordering::Relaxed) != 2 * k {
                std::thread::yield_now();
            }
            w.store(2 * k + 1, Ordering::Relaxed);
        }
        while w.load(Ordering::Relaxed) != 2 * n {
            std::hint::spin_loop();
        }
        Ok(2.0 * n as f64 / start.elapsed().as_secs_f64())
    }

    /// Node 1 writes `pages` pages from `SEQ`; node 0 reads them all through: MiB/s.
    fn seq_read(&mut self, pages: usize) -> Result<f64, String> {
        self.order(OP_FILL, pages as u64)?;
        let stamp = self.seq;
        let start = Instant::now();
        let mut sum = 0u64;
        for p in SEQ..SEQ + pages {
            for i in (0..PAGE).step_by(8) {
                sum = sum.wrapping_add(word(&self.region, p * PAGE + i).load(Ordering::Relaxed));
            }
        }
        let secs = start.elapsed().as_secs_f64();
        if sum != stamp.wrapping_mul(pages as u64) {
            return Err("the sequential range did not read back as written".into());
        }
        Ok((pages * PAGE) as f64 / secs / (1 << 20) as f64)
    }
}

/// The calling thread, and the threads it starts meanwhile, kept to one CPU; the CPUs
/// it was allowed before are allowed again on drop.
struct Pinned(CpuSet);

impl Pinned {
    fn to(cpu: usize) -> Result<Pinned, String> {
        let was = sched_getaffinity(None).map_err(|e| format!("the CPUs allowed: {e}"))?;
        let mut one = CpuSet::new();
        one.set(cpu);
        sched_setaffinity(None, &one).map_err(|e| format!("keeping to CPU {cpu}: {e}"))?;
        Ok(Pinned(was))
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // Best effort: a mask this thread had a moment ago is allowed again.
        let _ = sched_setaffinity(None, &self.0);
    }
}

/// The two CPUs the nodes keep to, one each, as on two hosts: the first two this
/// process may use; none if it may use only one (or `SHMPOOL_BENCH_NO_PIN` is set, to
/// anything).
fn node_cpus() -> Option<[usize; 2]> {
    if std::env::var_os("SHMPOOL_BENCH_NO_PIN").is_some() {
        return None;
    }
    let set = sched_getaffinity(None).ok()?;
    let mut cpus = (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c));
    Some([cpus.next()?, cpus.next()?])
}

/// Node 1 (the child process): carries out node 0's orders until told to quit.
pub fn bench_node(
    peers: &[Peer],
    size: u64,
    echo_at: Peer,
    faults: FaultCapture,
    (cpu, link_poll): (Option<usize>, Duration),
) -> Result<(), String> {
    // Kept for the process's life: it is the node's own CPU.
    let _pinned = cpu.map(Pinned::to).transpose()?;
    std::thread::spawn(move || echo(echo_at));
    let mut opts = RegionOptions::new(size as usize);
    opts.faults = faults;
    opts.link_poll = link_poll;
    let region = Region::join(1, peers, &opts).map_err(|e| e.to_string())?;
    let mut last = 0;
    loop {
        let order = word(&region, ORDER).load(Ordering::SeqCst);
        if order == last {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        last = order;
        let (op, arg, seq) = (order >> 24 & 0xff, order & 0xff_ffff, order >> 32);
        match op {
            OP_WRITE => (FIRST..FIRST + arg as usize)
                .for_each(|p| word(&region, p * PAGE).store(seq, Ordering::Relaxed)),
            OP_READ => {
                let sum: u64 = (FIRST..FIRST + arg as usize)
                    .map(|p| word(&region, p * PAGE).load(Ordering::Relaxed))
                    .sum();
                std::hint::black_box(sum);
            }
            OP_PINGPONG => {
                word(&region, ACK).store(order, Ordering::SeqCst);
                let w = word(&region, PING);
                for k in 0..arg {
                    while w.load(Ordering::Relaxed) != 2 * k + 1 {
                        std::thread::yield_now();
                    }
                    w.store(2 * k + 2, Ordering::Relaxed);
                }
                continue;
            }
            OP_FILL => {
                // One word of each page carries the stamp, so the page sums to it.
                for p in SEQ..SEQ + arg as usize {
                    word(&region, p * PAGE).store(seq, Ordering::Relaxed);
                }
            }
            OP_QUIT => {
                word(&region, ACK).store(order, Ordering::SeqCst);
                region.leave(Duration::from_secs(10));
                return Ok(());
            }
            _ => return Err(format!("unknown order {order:#x}")),
        }
        word(&region, ACK).store(order, Ordering::SeqCst);
    }
}

pub fn lines(plan: &Plan) -> Result<Vec<String>, String> {
    // 2,000 accesses and 256 MiB at the default --handoffs; less for a quick run. Faults
    // caught by page protection allow 64 MiB regions: their sequential range is 48 MiB.
    let n = (plan.handoffs / 500).clamp(100, 2000) as usize;
    let mib = (plan.handoffs * 256 / 1_000_000).clamp(4, 256) as usize;
    let mut out = Vec::new();
    let asleep = Duration::ZERO;
    for unix in [false, true] {
        out.extend(run(plan, n, mib, (FaultCapture::Userfaultfd, asleep), "", unix)?);
        out.extend(run(plan, n, mib, (FaultCapture::UserfaultfdSigbus, asleep), "-sigbus", unix)?);
        out.extend(run(plan, n, mib.min(48), (FaultCapture::Signals, asleep), "-signals", unix)?);
    }
    // And with busy links: readers that poll before they sleep.
    for unix in [false, true] {
        out.extend(run(plan, n, mib, (FaultCapture::UserfaultfdSigbus, BUSY_LINKS), "-sigbus-busy", unix)?);
    }
    Ok(out)
}

/// The reference's listening end.
enum EchoListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl EchoListener {
    fn accept(&self) -> std::io::Result<Box<dyn Duplex>> {
        Ok(match self {
            EchoListener::Tcp(l) => {
                let (c, _) = l.accept()?;
                c.set_nodelay(true)?;
                Box::new(c)
            }
            EchoListener::Unix(l) => Box::new(l.accept()?.0),
        })
    }
}

/// The lines of one pair of nodes catching faults with `faults`, linked by TCP or by
/// Unix sockets (`unix`), with `suffix` (and `-unix`) on the names.
fn run(
    plan: &Plan,
    n: usize,
    mib: usize,
    (faults, link_poll): (FaultCapture, Duration),
    suffix: &str,
    unix: bool,
) -> Result<Vec<String>, String> {
    let seq_pages = (mib << 20) / PAGE;
    let size = (SEQ + seq_pages) * PAGE;
    let dir = if unix { Some(crate::dsm::SocketDir::new("dsm-bench")?) } else { None };
    // The echo's port first: the nodes' are free ports released again, which a later
    // bind could be given.
    let (echo, echo_at) = if let Some(dir) = &dir {
        let p = dir.join("echo.sock");
        (EchoListener::Unix(UnixListener::bind(&p).map_err(|e| e.to_string())?), Peer::Unix(p))
    } else {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let at = Peer::Tcp(l.local_addr().map_err(|e| e.to_string())?);
        (EchoListener::Tcp(l), at)
    };
    let echo_at = echo_at.to_string();
    let addrs = free_peers(2, dir.as_ref())?;
    let list = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let cpus = node_cpus();
    // This thread (which times the accesses) and the node's threads, which it starts,
    // keep to node 0's CPU until the run ends; node 1 keeps to the other.
    let _pinned = cpus.map(|[c, _]| Pinned::to(c)).transpose()?;
    let mut child = Command::new(exe)
        .args(["__dsm-bench-node", "--peers", &list, "--size", &size.to_string(), "--echo", &echo_at])
        .args(["--faults", crate::dsm::faults_arg(faults)])
        .args(cpus.map(|[_, c]| format!("--cpu={c}")))
        .arg(format!("--link-poll-us={}", link_poll.as_micros()))
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting node 1: {e}"))?;
    let mut opts = RegionOptions::new(size);
    opts.faults = faults;
    opts.link_poll = link_poll;
    let joined = Region::join(0, &addrs, &opts).map_err(|e| e.to_string());
    let region = match joined {
        Ok(r) => r,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let mut o = Orders { region, seq: 0 };
    let (capture, suffix) = (suffix, if unix { format!("{suffix}-unix") } else { suffix.to_string() });
    let link = if unix { "unix" } else { "tcp" };
    let result = echo.accept().map_err(|e| format!("node 1's echo: {e}")).and_then(|mut c| {
        measure(&mut o, &mut *c, plan, n, seq_pages, (&format!("{link}{capture}"), &suffix), (link, cpus))
    });
    let _ = o.order(OP_QUIT, 0);
    o.region.leave(Duration::from_secs(10));
    let _ = child.wait();
    result
}

/// The lines of one run: `names` are the reference's line and the suffix of the
/// others; `link` ("tcp" or "unix") names the reference in the ratios, and `cpus` are
/// the nodes' CPUs, if they keep to one each.
fn measure(
    o: &mut Orders,
    reference: &mut dyn Duplex,
    plan: &Plan,
    n: usize,
    seq_pages: usize,
    (reference_name, suffix): (&str, &str),
    (link, cpus): (&str, Option<[usize; 2]>),
) -> Result<Vec<String>, String> {
    round_trip(reference, n / 4, false)?;
    round_trip(reference, n / 4, true)?;
    o.reads_and_upgrades(n / 4)?; // warm-up
    o.ping_pong(n as u64 / 4)?;
    let (mut rtt, mut polled, mut p50, mut p99, mut vs, mut vs_poll) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut up50, mut up99, mut upvs, mut upvs_poll) = (vec![], vec![], vec![], vec![]);
    let (mut xfer, mut seq, mut local) = (vec![], vec![], vec![]);
    for _ in 0..plan.reps {
        let (blocked, poll) = (round_trip(reference, n, false)?, round_trip(reference, n, true)?);
        let [mut r, mut l, mut u] = o.reads_and_upgrades(n)?;
        let (r50, u50) = (percentile(&mut r, 50), percentile(&mut u, 50));
        local.push(percentile(&mut l, 50));
        rtt.push(blocked);
        polled.push(poll);
        p50.push(r50);
        p99.push(percentile(&mut r, 99));
        vs.push(r50 / blocked);
        vs_poll.push(r50 / poll);
        up50.push(u50);
        up99.push(percentile(&mut u, 99));
        upvs.push(u50 / blocked);
        upvs_poll.push(u50 / poll);
        xfer.push(o.ping_pong(n as u64)?);
        seq.push(o.seq_read(seq_pages)?);
    }
    let [rtt, polled, p50, p99, vs, vs_poll, up50, up99, upvs, upvs_poll, xfer, seq, local] =
        [rtt, polled, p50, p99, vs, vs_poll, up50, up99, upvs, upvs_poll, xfer, seq, local].map(Spread::of);
    let link_name = if link == "tcp" { "loopback" } else { "Unix socket" };
    let place = match cpus {
        Some([a, b]) => format!("{link_name}, nodes kept to CPUs {a} and {b}"),
        None => format!("{link_name}, nodes on any CPU"),
    };
    Ok(vec![
        format!(
            "{reference_name} rtt_ns={:.0} min={:.0} max={:.0} reps={} (8-byte request and reply between the two node processes, {place}, both blocking)",
            rtt.median, rtt.min, rtt.max, plan.reps
        ),
        format!(
            "{reference_name}-poll rtt_ns={:.0} min={:.0} max={:.0} reps={} (the same, the requester polling for the reply as a faulting thread does)",
            polled.median, polled.min, polled.max, plan.reps
        ),
        format!(
            "shmpool dsm-read{suffix} p50_ns={:.0} p99_ns={:.0} min_p50={:.0} max_p50={:.0} reps={} vs_{link}_rtt={:.2} vs_{link}_poll_rtt={:.2}",
            p50.median, p99.median, p50.min, p50.max, plan.reps, vs.median, vs_poll.median
        ),
        format!(
            "shmpool dsm-upgrade{suffix} p50_ns={:.0} p99_ns={:.0} min_p50={:.0} max_p50={:.0} reps={} vs_{link}_rtt={:.2} vs_{link}_poll_rtt={:.2}",
            up50.median, up99.median, up50.min, up50.max, plan.reps, upvs.median, upvs_poll.median
        ),
        format!(
            "shmpool dsm-local-upgrade{suffix} p50_ns={:.0} min={:.0} max={:.0} reps={} (the first write to an Exclusive copy)",
            local.median, local.min, local.max, plan.reps
        ),
        format!(
            "shmpool dsm-pingpong{suffix} transfers_s={:.0} min={:.0} max={:.0} reps={}",
            xfer.median, xfer.min, xfer.max, plan.reps
        ),
        format!(
            "shmpool dsm-seqread{suffix} mib_s={:.1} min={:.1} max={:.1} reps={} region_mib={}",
            seq.median,
            seq.min,
            seq.max,
            plan.reps,
            (seq_pages * PAGE) >> 20
        ),
    ])
}
