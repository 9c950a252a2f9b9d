//! Where a fault's time goes: `cargo run --release -p shmpool-dsm --example fault_probe`.
//! Node 0 (this process) and node 1 (a child: this program with `child`) map one region;
//! node 0 times first touches of pages homed at itself (no message leaves the node), of
//! pages homed at node 1 that nobody wrote (one round trip, no bytes), and of pages node
//! 1 wrote (a recall), and prints the medians; then both play ping-pong on one word. `FAULTS=signals` catches faults by page
//! protection instead of userfaultfd, `FAULTS=userfaultfd-sigbus` on the faulting thread;
//! `LINKS=unix` links the two nodes by Unix sockets instead of loopback TCP; `PIN=1`
//! keeps each node to a CPU of its own (this process to the first it may use, the child
//! to the second), as the bench does.

use shmpool_dsm::region::{FaultCapture, Region, RegionOptions};
use shmpool_dsm::transport::Peer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
const N: usize = 2000;
/// The ping-pong word (on a page of its own), and its round trips.
const PING: usize = 7 * N * PAGE;
const ROUNDS: u64 = 2000;

fn word(r: &Region, at: usize) -> &AtomicU64 {
    r.atomic_u64(at).expect("a word of the region")
}

/// Keeps this thread, and the threads it starts from now on, to the `nth` CPU it may
/// use.
fn keep_to_cpu(nth: usize) {
    use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
    let allowed = sched_getaffinity(None).expect("the CPUs allowed");
    let mut cpus = (0..CpuSet::MAX_CPU).filter(|&c| allowed.is_set(c));
    let cpu = cpus.nth(nth).expect("PIN=1 needs two CPUs");
    let mut one = CpuSet::new();
    one.set(cpu);
    sched_setaffinity(None, &one).expect("keeping to one CPU");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let child = args.get(1).map(String::as_str) == Some("child");
    let peers: Vec<Peer> = if child {
        args[2].split(',').map(|a| a.parse().unwrap()).collect()
    } else if std::env::var("LINKS").as_deref() == Ok("unix") {
        let dir = std::env::temp_dir();
        (0..2).map(|i| Peer::Unix(dir.join(format!("fault-probe-{}-{i}.sock", std::process::id())))).collect()
    } else {
        (0..2)
            .map(|_| Peer::Tcp(std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()))
            .collect()
    };
    let mut opts = RegionOptions::new(8 * N * PAGE);
    // `FAULTS=signals` for page protection.
    opts.faults = match std::env::var("FAULTS").as_deref() {
        Ok("signals") => FaultCapture::Signals, // 16,000 pages: allowed
        Ok("userfaultfd-sigbus") => FaultCapture::UserfaultfdSigbus,
        _ => FaultCapture::Userfaultfd,
    };
    let pin = std::env::var("PIN").as_deref() == Ok("1");
    if child {
        if pin {
            keep_to_cpu(1);
        }
        let r = Region::join(1, &peers, &opts).unwrap();
        for p in 4 * N..6 * N {
            word(&r, p * PAGE).store(p as u64, Ordering::Relaxed);
        }
        word(&r, 8).store(1, Ordering::SeqCst);
        let w = word(&r, PING);
        for k in 0..ROUNDS {
            while w.load(Ordering::Relaxed) != 2 * k + 1 {
                std::thread::yield_now();
            }
            w.store(2 * k + 2, Ordering::Relaxed);
        }
        r.leave(Duration::from_secs(60));
        return;
    }
    let list = peers.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
    let mut c = std::process::Command::new(&args[0]).args(["child", &list]).spawn().unwrap();
    if pin {
        keep_to_cpu(0); // after the child started: it may use both
    }
    let r = Region::join(0, &peers, &opts).unwrap();
    while word(&r, 8).load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let time = |pages: &mut dyn Iterator<Item = usize>| {
        let mut t: Vec<u64> = pages
            .map(|p| {
                let s = Instant::now();
                let _ = word(&r, p * PAGE).load(Ordering::Relaxed);
                s.elapsed().as_nanos() as u64
            })
            .collect();
        t.sort_unstable();
        t[t.len() / 2]
    };
    let local = time(&mut (2 * N..3 * N).filter(|p| p % 2 == 0));
    let remote = time(&mut (2 * N..3 * N).filter(|p| p % 2 == 1));
    let recall_home_there = time(&mut (4 * N..6 * N).filter(|p| p % 2 == 1));
    let recall_home_here = time(&mut (4 * N..6 * N).filter(|p| p % 2 == 0));
    let mut up: Vec<u64> = (4 * N..6 * N)
        .map(|p| {
            let s = Instant::now();
            word(&r, p * PAGE + 8).store(1, Ordering::Relaxed);
            s.elapsed().as_nanos() as u64
        })
        .collect();
    up.sort_unstable();
    println!("local zero page {local} ns; remote zero page {remote} ns; recall (home = owner) {recall_home_there} ns; recall (home here) {recall_home_here} ns; upgrade {} ns", up[up.len() / 2]);
    // Two nodes writing one word alternately: transfers per second, and this node's
    // requests and messages per transfer (1 and 2 when no page moves in vain).
    let (w, before, start) = (word(&r, PING), r.stats(), Instant::now());
    for k in 0..ROUNDS {
        while w.load(Ordering::Relaxed) != 2 * k {
            std::thread::yield_now();
        }
        w.store(2 * k + 1, Ordering::Relaxed);
    }
    while w.load(Ordering::Relaxed) != 2 * ROUNDS {
        std::thread::yield_now();
    }
    let (took, after, xfers) = (start.elapsed(), r.stats(), 2 * ROUNDS);
    println!(
        "ping-pong {:.0} transfers/s; node 0: {:.2} requests and {:.2} messages sent per transfer",
        xfers as f64 / took.as_secs_f64(),
        (after.requests - before.requests) as f64 / xfers as f64,
        (after.sent - before.sent) as f64 / xfers as f64
    );
    r.leave(Duration::from_secs(10));
    c.wait().unwrap();
}
