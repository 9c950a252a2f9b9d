//! Distributed regions across real processes: each test starts its nodes as child
//! processes (this test binary, run again as `node_main` with the workload in its
//! environment), over loopback TCP (or Unix sockets), and checks what they print. Every node touches the
//! region with plain loads, stores and atomics; the faults move the pages.

use shmpool_dsm::protocol::Fault;
use shmpool_dsm::region::{FaultCapture, Region, RegionOptions};
use shmpool_dsm::transport::Peer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PAGE: usize = 4096;

// ---------------------------------------------------------------------------------
// The parent side.

struct Run {
    children: Vec<Child>,
    /// The Unix sockets' directory, if the nodes use them.
    dir: Option<std::path::PathBuf>,
}

impl Drop for Run {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let ls: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    ls.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// Starts `n` nodes running `workload` with `args`, each mapping `len` bytes at `base`.
fn start(n: usize, workload: &str, args: &str, len: usize, base: usize) -> Run {
    start_with(n, workload, args, len, base, FAULTS.with(|f| f.get()))
}

thread_local! {
    /// How the nodes the current test starts catch faults.
    static FAULTS: std::cell::Cell<&'static str> = const { std::cell::Cell::new("userfaultfd") };
    /// Whether they are linked by Unix sockets (else loopback TCP).
    static UNIX: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether userfaultfd nodes copy recalled pages out instead of moving them
    /// (`SHMPOOL_DSM_NO_MOVE`: the path of kernels before 6.8).
    static NO_MOVE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// How long their link readers poll before they sleep, µs (`RegionOptions::link_poll`).
    static LINK_POLL_US: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Each test three times: nodes catching faults with userfaultfd (a handler thread, or
/// SIGBUS on the faulting thread), and with page protection.
macro_rules! both_captures {
    ($(fn $name:ident() $body:block)*) => {$(
        mod $name {
            use super::*;
            pub fn run() $body
            #[test]
            pub fn userfaultfd() {
                FAULTS.with(|f| f.set("userfaultfd"));
                run()
            }
            #[test]
            fn signals() {
                FAULTS.with(|f| f.set("signals"));
                run()
            }
            #[test]
            pub fn userfaultfd_sigbus() {
                FAULTS.with(|f| f.set("userfaultfd-sigbus"));
                run()
            }
        }
    )*};
}

/// Whether the nodes the current test starts give up pages by moving them out: with
/// userfaultfd, on a kernel that can (Linux 6.8), unless told to copy them.
fn moves() -> bool {
    FAULTS.with(|f| f.get()) != "signals"
        && !NO_MOVE.with(|m| m.get())
        && shmpool_dsm::uffd::Uffd::open().is_ok_and(|u| u.moves())
}

fn start_with(n: usize, workload: &str, args: &str, len: usize, base: usize, faults: &str) -> Run {
    let (peers, dir) = if UNIX.with(|u| u.get()) {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shmpool-dsm-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let peers = (0..n).map(|i| format!("unix:{}/node-{i}.sock", dir.display())).collect::<Vec<_>>();
        (peers.join(","), Some(dir))
    } else {
        (free_addrs(n).iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","), None)
    };
    let no_move = NO_MOVE.with(|m| m.get());
    let link_poll_us = LINK_POLL_US.with(|p| p.get());
    let children = (0..n)
        .map(|id| {
            let mut c = Command::new(std::env::current_exe().unwrap());
            if no_move {
                c.env("SHMPOOL_DSM_NO_MOVE", "1");
            }
            c.args(["--exact", "node_main", "--ignored", "--nocapture", "--test-threads=1"])
                .env("DSM_WORKLOAD", workload)
                .env("DSM_ID", id.to_string())
                .env("DSM_PEERS", &peers)
                .env("DSM_ARGS", args)
                .env("DSM_LEN", len.to_string())
                .env("DSM_BASE", base.to_string())
                .env("DSM_FAULTS", faults)
                .env("DSM_LINK_POLL_US", link_poll_us.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        })
        .collect();
    Run { children, dir }
}

/// How a node ended, and its `RESULT` lines up to "done" (the test harness may print
/// its own words before one on the same line).
type Outcome = (std::process::ExitStatus, Vec<String>);

/// Reads every node's output on a thread of its own: each node's `RESULT` lines are
/// sent when it says it is done (or ends).
fn collect(run: &mut Run) -> std::sync::mpsc::Receiver<(usize, Vec<String>)> {
    collect_with_ready(run).0
}

/// As `collect`, and each node's "ready" (a line `DSM-READY`) on a second channel.
fn collect_with_ready(
    run: &mut Run,
) -> (std::sync::mpsc::Receiver<(usize, Vec<String>)>, std::sync::mpsc::Receiver<usize>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    for (i, c) in run.children.iter_mut().enumerate() {
        let out = c.stdout.take().unwrap();
        let (tx, ready_tx) = (tx.clone(), ready_tx.clone());
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut done = false;
            // Read to the end (the harness prints after the node is let go), but report
            // at "done".
            for l in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
                if l.contains("DSM-READY") {
                    let _ = ready_tx.send(i);
                }
                if l.contains("DSM-DONE") && !done {
                    done = true;
                    let _ = tx.send((i, std::mem::take(&mut lines)));
                }
                if let Some((_, r)) = l.split_once("RESULT ") {
                    lines.push(r.to_string());
                }
            }
            if !done {
                let _ = tx.send((i, lines)); // it ended early: its exit status tells
            }
        });
    }
    (rx, ready_rx)
}

/// Waits (watchdog: 120 s from `since`) for `count` more nodes to be done.
fn wait_done(
    rx: &std::sync::mpsc::Receiver<(usize, Vec<String>)>,
    got: &mut [Option<Vec<String>>],
    count: usize,
    since: Instant,
) {
    for _ in 0..count {
        let left = (since + Duration::from_secs(120)).saturating_duration_since(Instant::now());
        let (i, lines) = rx.recv_timeout(left).expect("watchdog: the nodes did not finish in 120 s");
        got[i] = Some(lines);
    }
}

/// Lets every node go (a node stays up until then: the others may still need its
/// pages) and waits for it: its lines, or how it ended.
fn release(run: &mut Run, got: Vec<Option<Vec<String>>>) -> Vec<Outcome> {
    for c in &mut run.children {
        drop(c.stdin.take());
    }
    run.children
        .iter_mut()
        .zip(got)
        .map(|(c, lines)| (c.wait().unwrap(), lines.unwrap_or_default()))
        .collect()
}

/// Waits for every node to say it is done, then lets them all go.
fn finish(mut run: Run) -> Vec<Outcome> {
    let (rx, since) = (collect(&mut run), Instant::now());
    let n = run.children.len();
    let mut got = vec![None; n];
    wait_done(&rx, &mut got, n, since);
    release(&mut run, got)
}

fn results_ok(run: Run) -> Vec<Vec<String>> {
    finish(run)
        .into_iter()
        .enumerate()
        .map(|(i, (st, lines))| {
            assert!(st.success(), "node {i} failed: {st}");
            lines
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The node side.

/// A child node: runs the workload its environment names (nothing when run by hand).
#[test]
#[ignore = "a node of the multi-process tests, started by them"]
fn node_main() {
    let Ok(workload) = std::env::var("DSM_WORKLOAD") else { return };
    let env = |k: &str| std::env::var(k).unwrap();
    let id: u16 = env("DSM_ID").parse().unwrap();
    let peers: Vec<Peer> = env("DSM_PEERS").split(',').map(|a| a.parse().unwrap()).collect();
    let mut opts = RegionOptions::new(env("DSM_LEN").parse().unwrap());
    opts.base = env("DSM_BASE").parse().unwrap();
    opts.faults = match env("DSM_FAULTS").as_str() {
        "signals" => FaultCapture::Signals,
        "userfaultfd-sigbus" => FaultCapture::UserfaultfdSigbus,
        _ => FaultCapture::Userfaultfd,
    };
    opts.link_poll = Duration::from_micros(env("DSM_LINK_POLL_US").parse().unwrap());
    let region = Region::join(id, &peers, &opts).unwrap();
    assert_eq!(region.fault_capture(), opts.faults);
    let args = env("DSM_ARGS");
    let out = match workload.as_str() {
        "counter" => counter(&region, args.parse().unwrap()),
        "mp" => message_passing(&region, args.parse().unwrap()),
        "sb" => store_buffering(&region, args.parse().unwrap()),
        "history" => history(&region, args.parse().unwrap()),
        "checksums" => checksums(&region, args.parse().unwrap()),
        "sequential" => sequential(&region, args.parse().unwrap(), false),
        "sequential-fixed" => sequential(&region, args.parse().unwrap(), true),
        "survive" => survive(&region),
        "board" => {
            let r = shmpool_dsm::board::build(&region, args.parse().unwrap()).unwrap();
            vec![format!("{:?} {} {} {} {:?}", r.by_author, r.corrupt, r.shared_pages, r.freed, r.allocated)]
        }
        other => panic!("no workload {other}"),
    };
    for l in out {
        println!("RESULT {l}");
    }
    // Stay up until the test lets every node go: the others may still need this
    // node's pages.
    println!("DSM-DONE");
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
}

fn word(region: &Region, offset: usize) -> &AtomicU64 {
    region.atomic_u64(offset).unwrap()
}

/// Waits until every node has passed barrier `k` (counters in the last page).
fn barrier(region: &Region, k: usize) {
    let at = region.len() - PAGE + 8 * k;
    word(region, at).fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while word(region, at).load(Ordering::SeqCst) < u64::from(region.nodes()) {
        assert!(Instant::now() < deadline, "barrier {k}: the other nodes never came");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// `rounds` rounds; in round `r`, node `r % nodes` (or node 0, `fixed`) writes every page but the barriers'
/// (each word its round and page), and the others read them all through, in order, so
/// that their read-ahead asks for the pages before they touch them. Prints the words
/// that were not what was written, and whether any page was read ahead.
fn sequential(region: &Region, rounds: u64, fixed: bool) -> Vec<String> {
    let (me, nodes) = (u64::from(region.id()), u64::from(region.nodes()));
    // With `fixed`, node 0 writes in every round: the others' copies, read whole and
    // not written, are taken back each time.
    let writer = |r: u64| if fixed { 0 } else { r % nodes };
    let pages = region.len() / PAGE - 1;
    let mut bad = 0;
    for r in 0..rounds {
        let stamp = |p: usize| r << 32 | p as u64;
        if writer(r) == me {
            for p in 0..pages {
                for i in (0..PAGE).step_by(8) {
                    word(region, p * PAGE + i).store(stamp(p), Ordering::Relaxed);
                }
            }
        }
        barrier(region, 2 * r as usize);
        if writer(r) != me {
            for p in 0..pages {
                bad += (0..PAGE)
                    .step_by(8)
                    .filter(|&i| word(region, p * PAGE + i).load(Ordering::Relaxed) != stamp(p))
                    .count();
            }
        }
        barrier(region, 2 * r as usize + 1);
    }
    let stats = region.stats();
    vec![format!("{bad} {} {}", stats.read_ahead > 0, stats.moved > 0)]
}

/// Every node adds 1 to one word `rounds` times, with `fetch_add` and with a CAS loop on
/// another; each also stamps its own page. Prints both sums and the stamps it reads.
fn counter(region: &Region, rounds: u64) -> Vec<String> {
    barrier(region, 0);
    let me = u64::from(region.id());
    for _ in 0..rounds {
        word(region, 8).fetch_add(1, Ordering::SeqCst);
        let w = word(region, 16);
        let mut v = w.load(Ordering::Relaxed);
        while let Err(seen) = w.compare_exchange(v, v + 1, Ordering::SeqCst, Ordering::Relaxed) {
            v = seen;
        }
    }
    word(region, PAGE * (1 + me as usize)).store(1000 + me, Ordering::SeqCst);
    barrier(region, 2);
    let stamps: Vec<String> = (0..u64::from(region.nodes()))
        .map(|i| word(region, PAGE * (1 + i as usize)).load(Ordering::SeqCst).to_string())
        .collect();
    vec![format!(
        "{} {} {}",
        word(region, 8).load(Ordering::SeqCst),
        word(region, 16).load(Ordering::SeqCst),
        stamps.join(",")
    )]
}

/// Node 0 writes round `r` into the data word (page 1), then the flag (page 2); the
/// other nodes read the flag, then the data. A reader that sees flag `r` must see data
/// `r` or later. Prints the number of violations and rounds seen.
fn message_passing(region: &Region, rounds: u64) -> Vec<String> {
    barrier(region, 0);
    let (data, flag) = (word(region, PAGE), word(region, 2 * PAGE));
    if region.id() == 0 {
        for r in 1..=rounds {
            data.store(r, Ordering::Relaxed);
            flag.store(r, Ordering::Relaxed);
        }
        return vec!["0 0".into()];
    }
    let (mut bad, mut seen) = (0, 0);
    let mut last = 0;
    while last < rounds {
        let f = flag.load(Ordering::Relaxed);
        let d = data.load(Ordering::Relaxed);
        if d < f {
            bad += 1;
        }
        if f != last {
            seen += 1;
            last = f;
        }
    }
    vec![format!("{bad} {seen}")]
}

/// Nodes 0 and 1 run `rounds` store-buffering rounds on fresh pages (x = page 2r + 1,
/// y = page 2r + 2): 0 writes x and reads y, 1 writes y and reads x. Sequential
/// consistency forbids both reading 0. Prints the rounds where both did.
fn store_buffering(region: &Region, rounds: u64) -> Vec<String> {
    let me = region.id();
    let mut reads = Vec::new();
    for r in 0..rounds as usize {
        barrier_round(region, r);
        if me > 1 {
            continue;
        }
        let (x, y) = (word(region, PAGE * (2 * r + 1)), word(region, PAGE * (2 * r + 2)));
        let (mine, theirs) = if me == 0 { (x, y) } else { (y, x) };
        mine.store(1, Ordering::Relaxed);
        reads.push(theirs.load(Ordering::Relaxed));
    }
    vec![reads.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")]
}

/// A barrier per round on page 0, words 8 + 8r... (a word per round, up to 500).
fn barrier_round(region: &Region, r: usize) {
    let w = word(region, 8 + 8 * r);
    w.fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.load(Ordering::SeqCst) < u64::from(region.nodes()) {
        assert!(Instant::now() < deadline, "round {r}: the other nodes never came");
        std::hint::spin_loop();
    }
}

/// A random history over 6 words on 3 pages (two words a page): each operation is a
/// read (a plain load) or a write of a value no other write uses (a swap, which also
/// returns the value it overwrote, so each word's write order is known). Prints one
/// `r WORD VALUE` or `w WORD NEW OLD` line per operation, in program order.
fn history(region: &Region, ops: u64) -> Vec<String> {
    barrier(region, 0);
    let me = u64::from(region.id());
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (me + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut out = Vec::new();
    for k in 0..ops {
        let r = next();
        let w = (r % 6) as usize;
        let cell = word(region, PAGE * (1 + w / 2) + 8 * (w % 2));
        if r >> 32 & 1 == 0 {
            out.push(format!("r {w} {}", cell.load(Ordering::Relaxed)));
        } else {
            let new = (me + 1) << 32 | (k + 1);
            out.push(format!("w {w} {new} {}", cell.swap(new, Ordering::Relaxed)));
        }
    }
    out
}

/// Each node, `rounds` times: takes the spinlock (page 0), fills page 1 with one value
/// and its checksum, or checks the page's checksum, and lets go. Prints the torn pages
/// seen.
fn checksums(region: &Region, rounds: u64) -> Vec<String> {
    barrier(region, 0);
    let me = u64::from(region.id());
    let lock = word(region, 8);
    let (words, mut torn) = (PAGE / 8, 0);
    for k in 0..rounds {
        while lock.compare_exchange(0, me + 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
        if k % 2 == 0 {
            let v = (me << 48) | k;
            let mut sum = 0u64;
            for i in 0..words - 1 {
                let x = v.wrapping_mul(i as u64 + 1);
                sum = sum.wrapping_add(x);
                word(region, PAGE + 8 * i).store(x, Ordering::Relaxed);
            }
            word(region, PAGE + 8 * (words - 1)).store(sum, Ordering::Relaxed);
        } else {
            let sum = (0..words - 1)
                .fold(0u64, |s, i| s.wrapping_add(word(region, PAGE + 8 * i).load(Ordering::Relaxed)));
            if sum != word(region, PAGE + 8 * (words - 1)).load(Ordering::Relaxed) {
                torn += 1;
            }
        }
        lock.store(0, Ordering::Release);
    }
    vec![torn.to_string()]
}

/// Node 2 takes pages 4 (home 1) and 5 (its own) Modified, says it is done and stalls
/// until the test kills it, once the survivors hold page 2 (its own) Shared. The survivors wait for its death, then: pages 4 and 5 are
/// lost to them (`Fault::Lost` through `acquire`); page 6 (home 0, which node 2 never
/// touched) still counts, 500 adds each. When let go, node 1 touches page 4 (`SIGBUS`).
fn survive(region: &Region) -> Vec<String> {
    barrier(region, 0);
    // Node 2 must not touch a page the survivors need after its death (a page it read
    // last may have moved to it whole): the test kills it once both survivors are
    // ready, which they say on stdout.
    if region.id() == 2 {
        word(region, 4 * PAGE).store(4, Ordering::SeqCst);
        word(region, 5 * PAGE).store(5, Ordering::SeqCst);
        println!("DSM-DONE");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    // Page 2 (home 2, never written): both survivors hold a Shared copy when it dies.
    assert_eq!(word(region, 2 * PAGE).load(Ordering::SeqCst), 0);
    word(region, 3 * PAGE).fetch_add(1, Ordering::SeqCst);
    while word(region, 3 * PAGE).load(Ordering::SeqCst) < 2 {
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(word(region, 2 * PAGE).load(Ordering::SeqCst), 0);
    println!("DSM-READY");
    let deadline = Instant::now() + Duration::from_secs(60);
    while region.dead() == 0 {
        assert!(Instant::now() < deadline, "node 2 never died");
        std::thread::sleep(Duration::from_millis(2));
    }
    let lost = |page: usize| format!("{:?}", region.acquire(page * PAGE, 8, false));
    let (l4, l5) = (lost(4), lost(5));
    // A Shared copy of a page whose home died stays readable (no write can be granted
    // any more); a write to it fails; and a range past the end is refused.
    let shared = (
        region.acquire(2 * PAGE, 8, false),
        word(region, 2 * PAGE).load(Ordering::SeqCst),
        region.acquire(2 * PAGE, 8, true),
        region.acquire(region.len(), 1, false),
    );
    assert_eq!(
        shared,
        (Ok(()), 0, Err(Fault::Lost(2)), Err(Fault::OutOfRange(region.len() + 1))),
        "node {}",
        region.id()
    );
    for _ in 0..500 {
        word(region, 6 * PAGE).fetch_add(1, Ordering::SeqCst);
    }
    while word(region, 6 * PAGE).load(Ordering::SeqCst) < 1000 {
        assert!(Instant::now() < deadline, "the other survivor never finished");
        std::thread::sleep(Duration::from_micros(200));
    }
    println!("RESULT {l4} {l5} {}", word(region, 6 * PAGE).load(Ordering::SeqCst));
    println!("DSM-DONE");
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    if region.id() == 1 {
        // SAFETY: inside the region; the access raises SIGBUS (the page is lost), as
        // the test expects.
        let v = unsafe { core::ptr::read_volatile(region.as_ptr().add(4 * PAGE).cast::<u64>()) };
        println!("RESULT stale {v}");
    }
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------
// The tests. Each uses its own base address, so that they may run at once.

const BASE: usize = 0x3000_0000_0000;

both_captures! {
fn a_counter_added_to_by_three_nodes_sums_exactly() {
    let out = results_ok(start(3, "counter", "300", 16 * PAGE, BASE));
    for (i, lines) in out.iter().enumerate() {
        assert_eq!(lines, &vec!["900 900 1000,1001,1002".to_string()], "node {i}");
    }
}
}

both_captures! {
fn message_passing_sees_the_data_with_the_flag() {
    let out = results_ok(start(3, "mp", "2000", 16 * PAGE, BASE + (1 << 30)));
    for lines in &out[1..] {
        let (bad, seen) = lines[0].split_once(' ').unwrap();
        assert_eq!(bad, "0", "a reader saw a flag without its data");
        assert!(seen.parse::<u64>().unwrap() >= 1);
    }
}
}

both_captures! {
fn store_buffering_never_reads_both_old() {
    const ROUNDS: usize = 100;
    let out = results_ok(start(3, "sb", &ROUNDS.to_string(), (2 * ROUNDS + 3) * PAGE, BASE + (2 << 30)));
    let parse = |l: &str| l.split(',').map(|v| v.parse::<u64>().unwrap()).collect::<Vec<_>>();
    let (a, b) = (parse(&out[0][0]), parse(&out[1][0]));
    assert_eq!((a.len(), b.len()), (ROUNDS, ROUNDS));
    for r in 0..ROUNDS {
        assert!(a[r] == 1 || b[r] == 1, "round {r}: both nodes read the old value");
    }
}
}

both_captures! {
fn torn_pages_are_never_seen() {
    let out = results_ok(start(3, "checksums", "400", 8 * PAGE, BASE + (3 << 30)));
    for lines in &out {
        assert_eq!(lines, &vec!["0".to_string()]);
    }
}
}

both_captures! {
fn pages_read_in_order_are_read_ahead_and_read_as_written() {
    // 1,024 pages, which every node in turn writes after the others read them: each
    // node gives up more pages than a recall's scratch area holds.
    let out = results_ok(start(3, "sequential", "4", 1025 * PAGE, BASE + (11 << 30)));
    for (i, lines) in out.iter().enumerate() {
        assert_eq!(lines, &vec![format!("0 true {}", moves())], "node {i}: bad words, read ahead, moved");
    }
}
}

both_captures! {
fn pages_read_whole_and_taken_back_round_after_round_stay_right() {
    // Node 1 reads 1,024 pages whole (Exclusive, not written) and node 0 writes them
    // back each round: node 1 gives up far more pages than a recall's scratch area holds.
    let out = results_ok(start(2, "sequential-fixed", "4", 1025 * PAGE, BASE + (13 << 30)));
    assert_eq!(out[1], vec![format!("0 true {}", moves())], "node 1: bad words, read ahead, moved");
}
}

/// An event of a history: node, index in its program order.
type Ev = (usize, usize);

/// Whether the histories have a sequentially consistent order: the graph of program
/// order, reads-from, write order (each swap names the write it follows) and
/// from-reads must have no cycle.
fn sequentially_consistent(histories: &[Vec<String>]) -> Result<(), String> {
    let mut ids: HashMap<Ev, usize> = HashMap::new();
    let mut evs = Vec::new();
    for (n, h) in histories.iter().enumerate() {
        for i in 0..h.len() {
            ids.insert((n, i), evs.len());
            evs.push((n, i));
        }
    }
    // The write of each value, and the write that overwrote each value.
    let (mut writer, mut overwritten_by) = (HashMap::new(), HashMap::new());
    for (n, h) in histories.iter().enumerate() {
        for (i, l) in h.iter().enumerate() {
            let f: Vec<&str> = l.split(' ').collect();
            if f[0] == "w" {
                let (w, new, old): (u64, u64, u64) =
                    (f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap());
                writer.insert((w, new), ids[&(n, i)]);
                if overwritten_by.insert((w, old), ids[&(n, i)]).is_some() {
                    return Err(format!(
                        "two writes overwrote value {old} of word {w}: an atomic swap was not"
                    ));
                }
            }
        }
    }
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); evs.len()];
    for (n, h) in histories.iter().enumerate() {
        for (i, l) in h.iter().enumerate() {
            let me = ids[&(n, i)];
            if i + 1 < h.len() {
                edges[me].push(ids[&(n, i + 1)]); // program order
            }
            let f: Vec<&str> = l.split(' ').collect();
            let w: u64 = f[1].parse().unwrap();
            let read = if f[0] == "r" { f[2] } else { f[3] };
            let read: u64 = read.parse().unwrap();
            if read != 0 {
                let src = *writer
                    .get(&(w, read))
                    .ok_or(format!("node {n} read {read} from word {w}, never written"))?;
                edges[src].push(me); // reads-from (and write order, for a swap)
            }
            if f[0] == "r" {
                if let Some(&next) = overwritten_by.get(&(w, read)) {
                    edges[me].push(next); // from-reads: the read came before the next write
                }
            }
        }
    }
    // Kahn: every event sorted, or a cycle.
    let mut indeg = vec![0usize; evs.len()];
    for e in edges.iter().flatten() {
        indeg[*e] += 1;
    }
    let mut ready: Vec<usize> = (0..evs.len()).filter(|&e| indeg[e] == 0).collect();
    let mut sorted = 0;
    while let Some(e) = ready.pop() {
        sorted += 1;
        for &t in &edges[e] {
            indeg[t] -= 1;
            if indeg[t] == 0 {
                ready.push(t);
            }
        }
    }
    if sorted == evs.len() {
        Ok(())
    } else {
        Err(format!("{} events are on a cycle: no sequentially consistent order", evs.len() - sorted))
    }
}

both_captures! {
fn random_histories_are_sequentially_consistent() {
    let out = results_ok(start(3, "history", "400", 8 * PAGE, BASE + (4 << 30)));
    assert!(out.iter().all(|h| h.len() == 400));
    sequentially_consistent(&out).unwrap();
}
}

both_captures! {
fn the_heap_runs_on_a_distributed_region() {
    let out = results_ok(start(3, "board", "200", 64 << 20, BASE + (5 << 30)));
    for (i, lines) in out.iter().enumerate() {
        let l = &lines[0];
        // Every note, intact; no page with two authors' notes; 200 freed.
        assert!(l.starts_with("[200, 200, 200] 0 0 200 "), "node {i}: {l}");
    }
    let (before, after) =
        out[0][0].rsplit_once("Some((").unwrap().1.trim_end_matches("))").split_once(", ").unwrap();
    assert_eq!(before, after, "the heap's allocated bytes are back where they started");
    assert!(out[1][0].ends_with("None") && out[2][0].ends_with("None"));
}
}

both_captures! {
fn a_node_killed_mid_run_leaves_the_survivors_working_and_its_pages_lost() {
    use std::os::unix::process::ExitStatusExt;
    let mut run = start(3, "survive", "", 8 * PAGE, BASE + (6 << 30));
    let ((rx, ready), since) = (collect_with_ready(&mut run), Instant::now());
    let mut got = vec![None; 3];
    wait_done(&rx, &mut got, 1, since);
    assert!(got[2].is_some(), "node 2 is the one to stall first");
    for _ in 0..2 {
        ready.recv_timeout(Duration::from_secs(60)).expect("watchdog: the survivors were not ready in 60 s");
    }
    run.children[2].kill().unwrap(); // SIGKILL, holding pages 4 and 5
    wait_done(&rx, &mut got, 2, since);
    let out = release(&mut run, got);
    for (i, (_, lines)) in out.iter().take(2).enumerate() {
        assert_eq!(lines, &["Err(Lost(4)) Err(Lost(5)) 1000"], "survivor {i}");
    }
    assert!(out[0].0.success());
    const SIGBUS: i32 = 7; // on Linux (x86, ARM, RISC-V)
    assert_eq!(out[1].0.signal(), Some(SIGBUS), "node 1 touching a lost page: {}", out[1].0);
}
}

/// userfaultfd nodes that copy recalled pages out and drop them, as on kernels without
/// `UFFDIO_MOVE`, instead of moving them out.
mod copying_recalls {
    use super::*;

    fn copying(test: fn()) {
        NO_MOVE.with(|m| m.set(true));
        test()
    }

    #[test]
    fn torn_pages_are_never_seen() {
        copying(super::torn_pages_are_never_seen::userfaultfd)
    }

    #[test]
    fn random_histories_are_sequentially_consistent() {
        copying(super::random_histories_are_sequentially_consistent::userfaultfd_sigbus)
    }

    #[test]
    fn a_counter_sums_exactly() {
        copying(a_counter_added_to_by_three_nodes_sums_exactly::userfaultfd)
    }

    #[test]
    fn pages_given_up_are_copied_not_moved() {
        copying(pages_read_in_order_are_read_ahead_and_read_as_written::userfaultfd)
    }
}

/// Nodes whose link readers poll 50 µs for the next message before they sleep (busy
/// links), faults caught on SIGBUS: the same workloads, the same outcomes.
mod busy_links {
    use super::*;

    fn busy(test: fn()) {
        LINK_POLL_US.with(|p| p.set(50));
        test()
    }

    #[test]
    fn random_histories_are_sequentially_consistent() {
        busy(super::random_histories_are_sequentially_consistent::userfaultfd_sigbus)
    }

    #[test]
    fn a_counter_sums_exactly() {
        busy(a_counter_added_to_by_three_nodes_sums_exactly::userfaultfd_sigbus)
    }

    #[test]
    fn torn_pages_are_never_seen() {
        busy(super::torn_pages_are_never_seen::userfaultfd_sigbus)
    }
}

/// Nodes on one host linked by Unix sockets instead of loopback TCP (faults caught with
/// userfaultfd): the same workloads, the same outcomes.
mod over_unix_sockets {
    use super::*;

    fn unix(test: fn()) {
        UNIX.with(|u| u.set(true));
        test()
    }

    #[test]
    fn a_counter_sums_exactly() {
        unix(a_counter_added_to_by_three_nodes_sums_exactly::run)
    }

    #[test]
    fn random_histories_are_sequentially_consistent() {
        unix(super::random_histories_are_sequentially_consistent::run)
    }

    #[test]
    fn the_heap_runs_on_the_region() {
        unix(the_heap_runs_on_a_distributed_region::run)
    }

    #[test]
    fn a_node_killed_leaves_the_survivors_working() {
        unix(a_node_killed_mid_run_leaves_the_survivors_working_and_its_pages_lost::run)
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_or_a_file_refused() {
        let dir = std::env::temp_dir().join(format!("shmpool-dsm-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node-0.sock");
        // A socket file nobody listens on any more (its node ended).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let peers = [Peer::Unix(path.clone())];
        let mut opts = RegionOptions::new(4 * PAGE);
        opts.base = BASE + (9 << 30);
        let region = Region::join(0, &peers, &opts).expect("a stale socket is replaced");
        assert!(!path.exists(), "the socket is removed once every peer has connected");
        // A live listener at the path is another node's: refused, and left alone.
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        opts.base = BASE + (10 << 30);
        let err = Region::join(0, &peers, &opts).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        assert!(path.exists());
        drop((live, region));
        // Nor is a file that is not a socket ever removed.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a socket").unwrap();
        opts.base = BASE + (12 << 30);
        let err = Region::join(0, &peers, &opts).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
        let _ = std::fs::remove_dir_all(&dir);
        let mixed = [Peer::Unix(path), "127.0.0.1:1".parse().unwrap()];
        let err = Region::join(0, &mixed, &opts).unwrap_err();
        assert!(err.to_string().contains("mix"), "{err}");
    }
}

#[test]
fn the_consistency_check_catches_a_stale_read() {
    // Node 0 writes 1 then 2 to word 0; node 1 reads 2 then 1: no SC order has it.
    let h = vec![
        vec![format!("w 0 {} 0", 1u64 << 32 | 1), format!("w 0 {} {}", 1u64 << 32 | 2, 1u64 << 32 | 1)],
        vec![format!("r 0 {}", 1u64 << 32 | 2), format!("r 0 {}", 1u64 << 32 | 1)],
    ];
    assert!(sequentially_consistent(&h).is_err());
    // Store buffering with both reads old: the classic non-SC outcome.
    let sb = vec![
        vec![format!("w 0 {} 0", 1u64 << 32 | 1), "r 1 0".to_string()],
        vec![format!("w 1 {} 0", 2u64 << 32 | 1), "r 0 0".to_string()],
    ];
    assert!(sequentially_consistent(&sb).is_err());
    let ok = vec![vec![format!("w 0 {} 0", 1u64 << 32 | 1)], vec![format!("r 0 {}", 1u64 << 32 | 1)]];
    assert!(sequentially_consistent(&ok).is_ok());
}

/// A `SIGSEGV` handler another library installs after a region's replaces ours; the
/// next region joined puts ours back in front of it, and both regions work again.
#[test]
fn a_later_sigsegv_handler_is_put_behind_ours_at_the_next_join() {
    extern "C" fn theirs(_: i32) {
        std::process::abort(); // a region fault must never reach it
    }
    let single = |base: usize| {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut opts = RegionOptions::new(16 * PAGE);
        opts.base = base;
        opts.faults = FaultCapture::Signals;
        Region::join_tcp(0, &[addr], &opts).unwrap()
    };
    let a = single(BASE + (7 << 30));
    word(&a, 0).store(1, Ordering::SeqCst); // a fault, served
                                            // SAFETY: installing a plain handler for SIGSEGV, as another library might.
    unsafe { libc::signal(libc::SIGSEGV, theirs as *const () as libc::sighandler_t) };
    let b = single(BASE + (8 << 30));
    word(&b, PAGE).store(2, Ordering::SeqCst);
    word(&a, 2 * PAGE).store(3, Ordering::SeqCst);
    assert_eq!((word(&a, 0).load(Ordering::SeqCst), word(&b, PAGE).load(Ordering::SeqCst)), (1, 2));
}

/// Page protection splits mappings, so a process's regions under it hold at most
/// `signals::MAX_PAGES` pages in all: more is refused before anything is joined, and a
/// region dropped gives its pages back.
#[test]
fn page_protection_keeps_to_its_page_budget() {
    let max = shmpool_dsm::signals::MAX_PAGES;
    let join = |base: usize, pages: usize| {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut opts = RegionOptions::new(pages * PAGE);
        opts.base = base;
        opts.faults = FaultCapture::Signals;
        Region::join_tcp(0, &[addr], &opts)
    };
    let too_big = join(BASE + (9 << 30), max + 1).unwrap_err();
    assert!(too_big.to_string().contains("at most"), "{too_big}");
    let first = join(BASE + (9 << 30), max - 10).unwrap();
    let refused = join(BASE + (10 << 30), 11).unwrap_err();
    assert!(refused.to_string().contains("already have"), "{refused}");
    drop(first);
    let second = join(BASE + (10 << 30), 11).unwrap();
    second.atomic_u64(0).unwrap().store(7, Ordering::SeqCst);
    assert_eq!(second.atomic_u64(0).unwrap().load(Ordering::SeqCst), 7);
}
