//! `shmpool dsm node` and `shmpool dsm demo`: nodes (processes) over loopback TCP
//! sharing one region through the coherence protocol (`shmpool_dsm`), with the
//! software driver's explicit accesses.
//!
//! The region's page 0 holds the counter (at 8), the nodes done (at 16); page 1 + i is
//! node i's, which it signs. A node that is done stays up (its pages may be asked for)
//! until `demo` ends it; node 0 prints the result once every node is done.

use shmpool_dsm::driver::NodeDriver;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
const COUNTER: usize = 8;
const DONE: usize = 16;

fn add(node: &NodeDriver, at: usize) -> Result<u64, String> {
    let mut v = 0;
    loop {
        let seen = node.cas_u64(0, at, v, v + 1).map_err(|e| format!("the counter's page: {e:?}"))?;
        if seen == v {
            return Ok(v + 1);
        }
        v = seen;
    }
}

fn load(node: &NodeDriver, page: u32, at: usize, len: usize) -> Result<Vec<u8>, String> {
    node.read(page, at, len).map_err(|e| format!("page {page}: {e:?}"))
}

pub fn node(id: u16, peers: &[SocketAddr], rounds: u64, stall_after: Option<u64>) -> Result<(), String> {
    let n = peers.len();
    if usize::from(id) >= n {
        return Err(format!("--id {id}: there are {n} peers"));
    }
    let node = NodeDriver::join_tcp(id, peers, 1 + n as u32, PAGE, Duration::from_secs(20))
        .map_err(|e| format!("joining the nodes: {e}"))?;
    for k in 0..rounds {
        if stall_after == Some(k) {
            loop {
                std::thread::sleep(Duration::from_secs(1)); // holding what it holds
            }
        }
        add(&node, COUNTER)?;
    }
    let sign = format!("node {id} was here");
    node.write(1 + u32::from(id), 0, sign.as_bytes()).map_err(|e| format!("{e:?}"))?;
    add(&node, DONE)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Every live node done (a node that died is done for good).
    while u64::from_le_bytes(load(&node, 0, DONE, 8)?.try_into().expect("8 bytes")) + u64::from(node.dead())
        < n as u64
    {
        if Instant::now() > deadline {
            return Err("the other nodes did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if id != 0 {
        // Others may still ask for this node's pages: stay up until the demo ends it.
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let counter = u64::from_le_bytes(load(&node, 0, COUNTER, 8)?.try_into().expect("8 bytes"));
    let mut out = format!("node 0 sees: counter {counter} ({} node(s) died)\n", node.dead());
    for i in 0..n as u32 {
        match load(&node, 1 + i, 0, 32) {
            Ok(page) => {
                let text: String = page.iter().take_while(|&&b| b != 0).map(|&b| b as char).collect();
                out.push_str(&format!("  page {}: {text:?}\n", 1 + i));
            }
            // Its only copy died with its node: never stale bytes.
            Err(e) => out.push_str(&format!("  page {}: lost ({e})\n", 1 + i)),
        }
    }
    crate::print_out(&out)
}

pub fn demo(rounds: u64) -> Result<(), String> {
    // Three free loopback ports (bound and released; a race with another program is
    // possible but unlikely).
    let peers: Vec<SocketAddr> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let list = peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    println!("shmpool dsm demo: 3 nodes over loopback TCP ({list}), {rounds} CAS increments each");
    let mut nodes: Vec<std::process::Child> = (0..3)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "dsm",
                    "node",
                    "--id",
                    &i.to_string(),
                    "--peers",
                    &list,
                    "--rounds",
                    &rounds.to_string(),
                ])
                .stdout(if i == 0 { Stdio::piped() } else { Stdio::null() })
                .spawn()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let first = nodes.remove(0);
    let pid = first.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).expect("a pid"),
            rustix::process::Signal::KILL,
        );
    });
    drop(watchdog);
    let out = first.wait_with_output().map_err(|e| e.to_string())?;
    for mut n in nodes {
        let _ = n.kill();
        let _ = n.wait();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    let want = format!("counter {}", 3 * rounds);
    if !out.status.success() || !text.contains(&want) {
        return Err(format!("node 0 did not see {want} ({})", out.status));
    }
    println!("  ok: the counter sums exactly, and every node's page is seen by node 0");
    Ok(())
}
