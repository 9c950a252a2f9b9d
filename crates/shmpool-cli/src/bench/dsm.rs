//! The distributed mode beside raw TCP, in one run: the round trip of an 8-byte
//! request and reply over loopback TCP (`TCP_NODELAY`), a remote read through the
//! coherence protocol (the page last written by the other node: recall, grant — the
//! software driver's access, where the fault handler will stand), and two nodes writing
//! one page alternately (transfers per second). The nodes are threads of this process,
//! joined over loopback TCP as separate processes would be.

use super::{Plan, Spread};
use shmpool_dsm::driver::NodeDriver;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn free_addrs(n: usize) -> Result<Vec<SocketAddr>, String> {
    (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string()))
        .collect()
}

fn percentile(v: &mut [u64], p: usize) -> f64 {
    v.sort_unstable();
    v[(v.len() * p / 100).min(v.len() - 1)] as f64
}

/// p50 of `n` 8-byte request/reply round trips over loopback TCP.
fn tcp_rtt(n: usize) -> Result<f64, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut b = [0u8; 8];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    c.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut b = [0u8; 8];
    let mut t: Vec<u64> = (0..n)
        .map(|i| {
            let s = Instant::now();
            c.write_all(&(i as u64).to_le_bytes()).expect("write");
            c.read_exact(&mut b).expect("read");
            s.elapsed().as_nanos() as u64
        })
        .collect();
    drop(c);
    let _ = echo.join();
    Ok(percentile(&mut t, 50))
}

fn two_nodes() -> Result<(Arc<NodeDriver>, Arc<NodeDriver>), String> {
    let addrs = free_addrs(2)?;
    let a2 = addrs.clone();
    let other = std::thread::spawn(move || NodeDriver::join_tcp(1, &a2, 64, 4096, Duration::from_secs(10)));
    let n0 = NodeDriver::join_tcp(0, &addrs, 64, 4096, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let n1 = other.join().map_err(|_| "node 1 panicked")?.map_err(|e| e.to_string())?;
    Ok((n0, n1))
}

/// Remote reads: node 1 writes a page, node 0 reads it (the timed access); p50, p99.
fn remote_reads(n0: &NodeDriver, n1: &NodeDriver, n: usize) -> (f64, f64) {
    let mut t: Vec<u64> = (0..n)
        .map(|i| {
            let page = (i % 64) as u32;
            n1.write(page, 0, &(i as u64).to_le_bytes()).expect("write");
            let s = Instant::now();
            let got = n0.read(page, 0, 8).expect("read");
            let ns = s.elapsed().as_nanos() as u64;
            assert_eq!(got, (i as u64).to_le_bytes(), "the last write");
            ns
        })
        .collect();
    (percentile(&mut t, 50), percentile(&mut t, 99))
}

/// Where the ping-pong counter lives: page 0, past the 8 bytes the reads use.
const TURN: usize = 512;

/// Two nodes write page 0 alternately (each waits for the other's write): transfers/s.
fn ping_pong(n0: &Arc<NodeDriver>, n1: &Arc<NodeDriver>, n: u64) -> Result<f64, String> {
    n0.write(0, TURN, &0u64.to_le_bytes()).map_err(|e| format!("{e:?}"))?;
    let run = |me: Arc<NodeDriver>, parity: u64| {
        std::thread::spawn(move || {
            let mut v = parity;
            while v < 2 * n {
                if me.cas_u64(0, TURN, v, v + 1).expect("cas") == v {
                    v += 2;
                }
            }
        })
    };
    let start = Instant::now();
    let (a, b) = (run(n0.clone(), 0), run(n1.clone(), 1));
    let _ = (a.join(), b.join());
    Ok(2.0 * n as f64 / start.elapsed().as_secs_f64())
}

pub fn lines(plan: &Plan) -> Result<Vec<String>, String> {
    let (n0, n1) = two_nodes()?;
    // 2,000 accesses at the default --handoffs; fewer for a quick run.
    let n = (plan.handoffs / 500).clamp(100, 2000) as usize;
    let (mut tcp, mut p50, mut p99, mut vs, mut xfer) = (vec![], vec![], vec![], vec![], vec![]);
    remote_reads(&n0, &n1, n / 4);
    for _ in 0..plan.reps {
        let rtt = tcp_rtt(n)?;
        let (a, b) = remote_reads(&n0, &n1, n);
        tcp.push(rtt);
        p50.push(a);
        p99.push(b);
        vs.push(a / rtt);
        xfer.push(ping_pong(&n0, &n1, n as u64)?);
    }
    let (tcp, p50, p99, vs, xfer) =
        (Spread::of(tcp), Spread::of(p50), Spread::of(p99), Spread::of(vs), Spread::of(xfer));
    Ok(vec![
        format!(
            "tcp rtt_ns={:.0} min={:.0} max={:.0} reps={} (8-byte request and reply, loopback)",
            tcp.median, tcp.min, tcp.max, plan.reps
        ),
        format!(
            "shmpool dsm-read p50_ns={:.0} p99_ns={:.0} min_p50={:.0} max_p50={:.0} reps={} vs_tcp_rtt={:.2}",
            p50.median, p99.median, p50.min, p50.max, plan.reps, vs.median
        ),
        format!(
            "shmpool dsm-pingpong transfers_s={:.0} min={:.0} max={:.0} reps={}",
            xfer.median, xfer.min, xfer.max, plan.reps
        ),
    ])
}
