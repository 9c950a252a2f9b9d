//! The kill storm: a supervisor runs four `shmpool stress` workers on one heap and
//! SIGKILLs one at random instants, replacing it, 200 times (`SHMPOOL_STORM_KILLS` sets
//! another count, e.g. 10000 locally). After each kill a survivor allocates within a
//! second. At the end, with every worker gone and recovery run, `shmpool check` is clean
//! and `shmpool stress --audit --release` finds nothing lost: free bytes plus the bytes
//! of the blocks still held equal the heap's capacity, before and after every held block
//! is freed.

use shmpool::heap::Heap;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WORKERS: usize = 4;

fn kills() -> u64 {
    std::env::var("SHMPOOL_STORM_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

fn worker(name: &str, seed: u64, seconds: f64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_shmpool"))
        .args(["stress", name, "--seconds", &seconds.to_string(), "--seed", &seed.to_string()])
        .args(["--threads", &(1 + seed % 2).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shmpool stress")
}

fn shmpool(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_shmpool")).args(args).output().expect("run shmpool");
    eprintln!(
        "shmpool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// SplitMix64, for the instants and the victims.
fn next(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A worker that ended by itself must have succeeded (a failed content check or a heap
/// error is exit code 1, with the reason on stderr).
fn assert_clean_exit(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "a stress worker failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// An allocation and a free by the supervisor, on a thread, within a second.
fn survivor_allocates(heap: &Heap, size: u64) -> Duration {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = heap.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        let r = h.alloc(size).map(|off| h.free(off));
        let _ = tx.send((r, started.elapsed()));
    });
    let (r, took) = rx.recv_timeout(Duration::from_secs(10)).expect("the survivor's allocation wedged");
    r.expect("alloc").expect("free");
    took
}

#[test]
fn kill_storm_loses_nothing() {
    let name = format!("shmpool-storm-{}", std::process::id());
    let _rm = scopeguard(&name);
    let seg = shmpool::SegmentOptions::new().max_size(16 << 30).create_shm(&name).unwrap();
    let heap = Heap::create(seg).unwrap();
    let mut rng = 0x5EED_u64;
    let mut seed = 0;
    let mut spawn = |rng: &mut u64| {
        seed += 1;
        worker(&name, seed, 0.2 + (next(rng) % 1800) as f64 / 1000.0)
    };
    let mut workers: Vec<Child> = (0..WORKERS).map(|_| spawn(&mut rng)).collect();
    let (target, started) = (kills(), Instant::now());
    let (mut killed, mut exited, mut slowest) = (0, 0, Duration::ZERO);
    while killed < target {
        assert!(started.elapsed() < Duration::from_secs(60 + target / 5), "the storm ran too long");
        std::thread::sleep(Duration::from_micros(1000 + next(&mut rng) % 30_000));
        for w in workers.iter_mut() {
            if w.try_wait().unwrap().is_some() {
                let done = std::mem::replace(w, spawn(&mut rng));
                assert_clean_exit(done);
                exited += 1;
            }
        }
        let victim = (next(&mut rng) % WORKERS as u64) as usize;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(workers[victim].id() as i32, libc::SIGKILL) };
        let dead = std::mem::replace(&mut workers[victim], spawn(&mut rng));
        let status = dead.wait_with_output().unwrap().status;
        use std::os::unix::process::ExitStatusExt;
        assert!(status.signal() == Some(libc::SIGKILL) || status.success(), "{status:?}");
        killed += 1;
        let size = if killed % 10 == 0 { 1 << 20 } else { 64 + killed % 4000 };
        let took = survivor_allocates(&heap, size);
        assert!(took < Duration::from_secs(1), "after kill {killed}, the survivor waited {took:?}");
        slowest = slowest.max(took);
    }
    for w in workers.iter_mut() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(w.id() as i32, libc::SIGKILL) };
    }
    for w in workers {
        let _ = w.wait_with_output();
    }
    eprintln!(
        "storm: {killed} kills, {exited} workers ended by themselves, in {:.1} s; slowest survivor allocation after a kill {slowest:?}",
        started.elapsed().as_secs_f64()
    );
    drop(heap);
    let audit = shmpool(&["stress", &name, "--audit", "--release"]);
    let report = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.status.success(), "something was lost: {report}");
    assert_eq!(report.matches("lost_bytes=0 ").count(), 2, "{report}");
    assert!(shmpool(&["check", &name]).status.success(), "check is clean");
}

/// Removes the segment when the test ends, pass or fail.
fn scopeguard(name: &str) -> impl Drop {
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = shmpool::Segment::unlink_shm(&self.0);
        }
    }
    Rm(name.to_owned())
}
