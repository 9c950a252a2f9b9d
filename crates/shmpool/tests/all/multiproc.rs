//! Processes sharing one segment: forked children, an unrelated process attaching by
//! name, a descriptor passed over a Unix socket, growth seen by a reading process, and
//! two processes growing at once. Every child runs under the watchdog.

use crate::support::{
    fork, pattern, spawn_peer, trial, unique_name, wait_all, wait_peer, wait_until, ShmGuard, TempDir,
};
use libtest_mimic::Trial;
use shmpool::segment::{Access, BackendKind, Commit};
use shmpool::{Segment, SegmentOptions};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("multiproc::forked_children_share_one_segment", forked_children_share_one_segment),
        trial("multiproc::unrelated_process_attaches_by_name", unrelated_process_attaches_by_name),
        trial("multiproc::fd_passed_to_unrelated_process", fd_passed_to_unrelated_process),
        trial("multiproc::growth_seen_by_reading_process", growth_seen_by_reading_process),
        trial("multiproc::concurrent_growth_ends_at_larger_size", concurrent_growth_ends_at_larger_size),
        trial("multiproc::open_shm_wait_meets_a_late_creator", open_shm_wait_meets_a_late_creator),
        trial(
            "multiproc::named_segment_is_private_by_default_and_drop_unmaps",
            named_segment_is_private_by_default_and_drop_unmaps,
        ),
    ]
}

const D: u64 = shmpool::segment::HEADER_LEN;

fn forked_children_share_one_segment() {
    let name = unique_name("fork");
    let _g = ShmGuard(name.clone());
    let seg = SegmentOptions::new().size(1 << 20).create_shm(&name).unwrap();
    const N: u64 = 20_000;
    let children: Vec<_> = (0..4u64)
        .map(|i| {
            let seg = &seg;
            fork(move || {
                let counter = seg.atomic_u64(D).unwrap();
                let region = D + 4096 + i * 65536;
                seg.write_bytes(region, &pattern(region, 65536, i)).unwrap();
                for _ in 0..N {
                    counter.fetch_add(1, Ordering::AcqRel);
                }
                0
            })
        })
        .collect();
    for c in children {
        assert_eq!(c.wait(), 0);
    }
    assert_eq!(seg.load_u64(D).unwrap(), 4 * N, "no increment lost");
    for i in 0..4u64 {
        let region = D + 4096 + i * 65536;
        let mut back = vec![0; 65536];
        seg.read_bytes(region, &mut back).unwrap();
        assert_eq!(back, pattern(region, 65536, i), "child {i}'s region");
    }
}

fn unrelated_process_attaches_by_name() {
    let name = unique_name("byname");
    let _g = ShmGuard(name.clone());
    let seg = SegmentOptions::new().size(1 << 20).create_shm(&name).unwrap();
    seg.write_bytes(D, &pattern(D, 8192, 11)).unwrap();
    assert_eq!(wait_peer(spawn_peer("attach-name", &[&name])), 0);
    let mut back = vec![0; 8192];
    seg.read_bytes(D + 65536, &mut back).unwrap();
    assert_eq!(back, pattern(D + 65536, 8192, 12), "the peer's reply");
}

pub fn peer_attach_name(args: &[&str]) -> i32 {
    let seg = Segment::open_shm(args[0], Access::ReadWrite).unwrap();
    assert_eq!(seg.kind(), BackendKind::PosixShm);
    let mut got = vec![0; 8192];
    seg.read_bytes(D, &mut got).unwrap();
    if got != pattern(D, 8192, 11) {
        return 3;
    }
    seg.write_bytes(D + 65536, &pattern(D + 65536, 8192, 12)).unwrap();
    0
}

fn fd_passed_to_unrelated_process() {
    let dir = TempDir::new("fdpass");
    let sock_path = dir.path("sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let seg = SegmentOptions::new().size(1 << 20).create_memfd("fdpass").unwrap();
    seg.write_bytes(D, &pattern(D, 8192, 21)).unwrap();
    let peer = spawn_peer("recv-fd", &[sock_path.to_str().unwrap()]);
    let (conn, _) = listener.accept().unwrap();
    seg.send_to(&conn).unwrap();
    assert_eq!(wait_peer(peer), 0);
    assert!(seg.committed() >= 4 << 20, "the peer's growth is visible here");
    let last = seg.committed() - 8192;
    let mut back = vec![0; 8192];
    seg.read_bytes(last, &mut back).unwrap();
    assert_eq!(back, pattern(last, 8192, 22), "the peer wrote into the pages it grew");
}

pub fn peer_recv_fd(args: &[&str]) -> i32 {
    let conn = std::os::unix::net::UnixStream::connect(args[0]).unwrap();
    let seg = Segment::receive(&conn, Access::ReadWrite).unwrap();
    assert_eq!(seg.kind(), BackendKind::Memfd);
    let mut got = vec![0; 8192];
    seg.read_bytes(D, &mut got).unwrap();
    if got != pattern(D, 8192, 21) {
        return 3;
    }
    let size = seg.grow_to(4 << 20).unwrap();
    let last = size - 8192;
    seg.write_bytes(last, &pattern(last, 8192, 22)).unwrap();
    0
}

const CHUNK: u64 = 64 << 10;
const CHUNKS: u64 = 64;

fn growth_seen_by_reading_process() {
    let name = unique_name("growread");
    let _g = ShmGuard(name.clone());
    let seg = SegmentOptions::new().size(8192).max_size(64 << 20).create_shm(&name).unwrap();
    let published = seg.atomic_u64(D).unwrap();
    let reader = spawn_peer("grow-reader", &[&name]);
    for i in 0..CHUNKS {
        let start = 8192 + i * CHUNK;
        seg.grow_to(start + CHUNK).unwrap();
        seg.write_bytes(start, &pattern(start, CHUNK as usize, i)).unwrap();
        // SYNC: Release pairs with the reader's Acquire load of the count.
        published.store(i + 1, Ordering::Release);
    }
    assert_eq!(wait_peer(reader), 0);
    assert_eq!(seg.load_u64(D + 8).unwrap(), CHUNKS, "the reader verified every chunk");
}

pub fn peer_grow_reader(args: &[&str]) -> i32 {
    let seg = Segment::open_shm(args[0], Access::ReadWrite).unwrap();
    let mut seen = 0;
    let mut buf = vec![0; CHUNK as usize];
    while seen < CHUNKS {
        let ready = seg.load_u64(D).unwrap();
        for i in seen..ready {
            let start = 8192 + i * CHUNK;
            assert!(seg.committed() >= start + CHUNK, "published before committed");
            seg.read_bytes(start, &mut buf).unwrap();
            if buf != pattern(start, CHUNK as usize, i) {
                return 3;
            }
        }
        seen = ready;
        std::thread::yield_now();
    }
    seg.atomic_u64(D + 8).unwrap().store(seen, Ordering::Release);
    0
}

/// Two processes grow the same segment at the same moments, one to a smaller size than
/// the other, and each writes a marker at the end of its new range. The segment is
/// `Commit::Lazy`, so growth is a bare `ftruncate`: without the growth lock, a smaller
/// `ftruncate` landing after a larger one would cut the larger grower's marker off
/// (zeroed, or a `SIGBUS`). A child that fails raises `abort` so the other stops waiting.
fn concurrent_growth_ends_at_larger_size() {
    const ROUNDS: u64 = 300;
    const BASE: u64 = 1 << 20;
    let name = unique_name("growrace");
    let _g = ShmGuard(name.clone());
    let seg =
        SegmentOptions::new().size(BASE).max_size(64 << 20).commit(Commit::Lazy).create_shm(&name).unwrap();
    let target = |round: u64, who: u64| BASE + round * CHUNK + if who == 0 { 16 << 10 } else { 48 << 10 };
    let children: Vec<_> = (0..2u64)
        .map(|who| {
            let seg = &seg;
            fork(move || {
                let (arrivals, abort) = (seg.atomic_u64(D).unwrap(), seg.atomic_u64(D + 8).unwrap());
                let barrier = |n: u64| {
                    arrivals.fetch_add(1, Ordering::AcqRel);
                    while arrivals.load(Ordering::Acquire) < n {
                        if abort.load(Ordering::Acquire) != 0 {
                            return false;
                        }
                        std::thread::yield_now();
                    }
                    true
                };
                let fail = |code: i32| {
                    abort.store(1, Ordering::Release);
                    code
                };
                for r in 0..ROUNDS {
                    if !barrier(4 * r + 2) {
                        return 5;
                    }
                    let end = target(r, who);
                    seg.grow_to(end).unwrap();
                    seg.atomic_u64(end - 8).unwrap().store(r << 1 | who, Ordering::Release);
                    if !barrier(4 * r + 4) {
                        return 5;
                    }
                    for w in 0..2 {
                        if seg.load_u64(target(r, w) - 8).unwrap() != r << 1 | w {
                            return fail(3);
                        }
                    }
                    if seg.info().backing_len < target(r, 1) {
                        return fail(4);
                    }
                }
                0
            })
        })
        .collect();
    let abort = seg.atomic_u64(D + 8).unwrap();
    let codes = wait_all(children, || abort.store(1, Ordering::Release));
    assert!(
        codes.iter().all(|&c| c == 0),
        "markers survive and the file never shrinks; codes {codes:?} (3: marker lost, 4: file shrank, \
         5: stopped by the other's failure, 135: SIGBUS)"
    );
    assert_eq!(seg.committed(), target(ROUNDS - 1, 1));
    assert_eq!(seg.info().backing_len, target(ROUNDS - 1, 1));
}

/// A process that starts before the segment exists waits for its creator; one that waits
/// for a name nobody creates gets `NotFound` once the timeout has passed.
fn open_shm_wait_meets_a_late_creator() {
    let name = unique_name("late");
    let _g = ShmGuard(name.clone());
    let creator = fork(|| {
        std::thread::sleep(Duration::from_millis(50));
        let seg = SegmentOptions::new().create_shm(&name).unwrap();
        seg.write_bytes(D + 8, &pattern(D + 8, 4096, 31)).unwrap();
        seg.atomic_u64(D).unwrap().store(1, Ordering::Release);
        0
    });
    let seg = Segment::open_shm_wait(&name, Access::ReadWrite, Duration::from_secs(20)).unwrap();
    wait_until("the creator's data", || seg.load_u64(D).unwrap() == 1);
    let mut back = vec![0; 4096];
    seg.read_bytes(D + 8, &mut back).unwrap();
    assert_eq!(back, pattern(D + 8, 4096, 31));
    assert_eq!(creator.wait(), 0);

    let start = Instant::now();
    let never = unique_name("never");
    let err = Segment::open_shm_wait(&never, Access::ReadWrite, Duration::from_millis(30)).unwrap_err();
    assert!(matches!(err, shmpool::AttachError::NotFound(_)), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(30), "it waited the whole timeout");
}

fn maps_file(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().any(|l| l.contains(path))
}

/// Mode 0600 whatever the umask; dropping the last `Segment` unmaps it; the name stays
/// until unlinked.
fn named_segment_is_private_by_default_and_drop_unmaps() {
    use std::os::unix::fs::PermissionsExt;
    let name = unique_name("mode");
    let _g = ShmGuard(name.clone());
    let path = format!("/dev/shm/{name}");
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0) };
    let seg = SegmentOptions::new().create_shm(&name).unwrap();
    // SAFETY: as above, restoring it.
    unsafe { libc::umask(old) };
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "not widened by a permissive umask");
    assert!(maps_file(&path), "mapped while the segment lives");
    drop(seg);
    assert!(!maps_file(&path), "drop unmaps");
    assert!(std::path::Path::new(&path).exists(), "the name stays until unlinked");
    let again = Segment::open_shm(&name, Access::ReadWrite).unwrap();
    assert!(again.unlink().unwrap());
    assert!(!std::path::Path::new(&path).exists());
}
