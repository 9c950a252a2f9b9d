//! Swappable segments: readers see whole versions; a pinned version outlives the
//! publishes after it and is freed once unpinned; ring mode keeps the last versions;
//! a reader killed holding a pin holds nothing; a writer and readers in different
//! processes at once.

use crate::support::{fork, trial, unique_name, wait_all, ShmGuard};
use libtest_mimic::Trial;
use shmpool::heap::Heap;
use shmpool::segment::Access;
use shmpool::sync::{SwapError, Swappable, VERSIONS};
use shmpool::{Segment, SegmentOptions};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("swap::a_pinned_version_outlives_later_publishes", a_pinned_version_outlives_later_publishes),
        trial("swap::ring_mode_keeps_the_last_versions", ring_mode_keeps_the_last_versions),
        trial("swap::every_entry_pinned_is_busy", every_entry_pinned_is_busy),
        trial("swap::a_killed_readers_pin_is_ignored", a_killed_readers_pin_is_ignored),
        trial(
            "swap::readers_in_other_processes_see_whole_versions",
            readers_in_other_processes_see_whole_versions,
        ),
    ]
}

fn allocated(heap: &Heap) -> u64 {
    heap.check().unwrap().allocated_bytes
}

fn heap() -> Heap {
    Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("swap").unwrap()).unwrap()
}

fn a_pinned_version_outlives_later_publishes() {
    let h = heap();
    let sw = Swappable::create_in(&h, 1).unwrap();
    let mut r = sw.reader().unwrap();
    assert_eq!(r.latest().err(), Some(SwapError::Empty));
    assert_eq!(sw.publish(b"first").unwrap(), 1);
    let v1 = r.latest().unwrap();
    assert_eq!((v1.generation(), v1.to_vec().unwrap()), (1, b"first".to_vec()));
    let base = allocated(&h);
    for g in 2..10u64 {
        assert_eq!(sw.publish(&[g as u8; 1000]).unwrap(), g);
    }
    assert_eq!(v1.to_vec().unwrap(), b"first", "pinned: still there and unchanged");
    assert!(allocated(&h) > base);
    drop(v1);
    let mut r2 = sw.reader().unwrap();
    assert_eq!(r2.at(1).err(), Some(SwapError::Gone(1)), "only the newest is readable");
    sw.publish(b"tenth").unwrap();
    // Now only the tenth is held: the first (unpinned) and 2..=9 are freed.
    let v = r2.latest().unwrap();
    assert_eq!((v.generation(), v.to_vec().unwrap()), (10, b"tenth".to_vec()));
    assert_eq!(allocated(&h), base, "one five-byte version held, as after the first publish");
    let mut buf = [0u8; 3];
    assert!(matches!(v.read(3, &mut buf), Err(SwapError::OutOfRange { at: 3, len: 3, size: 5 })));
    // SAFETY: nothing writes a published version.
    assert_eq!(unsafe { v.as_slice() }, b"tenth");
}

fn ring_mode_keeps_the_last_versions() {
    let h = heap();
    let sw = Swappable::create_in(&h, 3).unwrap();
    for g in 1..=5u64 {
        sw.publish(&g.to_le_bytes()).unwrap();
    }
    let mut r = sw.reader().unwrap();
    for g in 3..=5u64 {
        assert_eq!(r.at(g).unwrap().to_vec().unwrap(), g.to_le_bytes());
    }
    assert_eq!(r.at(2).err(), Some(SwapError::Gone(2)), "replaced by the fifth");
    assert_eq!(r.at(6).err(), Some(SwapError::Gone(6)), "not published yet");
    assert!(Swappable::create_in(&h, 0).is_err());
}

fn every_entry_pinned_is_busy() {
    let h = heap();
    let sw = Swappable::create_in(&h, 1).unwrap();
    let mut readers: Vec<_> = (0..VERSIONS).map(|_| sw.reader().unwrap()).collect();
    let mut pins = Vec::new();
    for r in readers.iter_mut() {
        sw.publish(b"v").unwrap();
        pins.push(r.latest().unwrap());
    }
    assert_eq!(sw.publish(b"one too many"), Err(SwapError::Busy));
    pins.remove(0); // the oldest: its entry can go
    assert!(sw.publish(b"room again").is_ok());
}

/// A child pins the first version and is killed: the writer frees it once the pin is
/// found dead; the bytes allocated come back to one version's.
fn a_killed_readers_pin_is_ignored() {
    let name = unique_name("swap-kill");
    let _g = ShmGuard(name.clone());
    let heap = Heap::create(SegmentOptions::new().max_size(64 << 20).create_shm(&name).unwrap()).unwrap();
    let sw = Swappable::named(&heap, "sw", 1).unwrap();
    sw.publish(&[1; 5000]).unwrap();
    let child = fork(|| {
        let heap = Heap::attach(Segment::open_shm(&name, Access::ReadWrite).unwrap()).unwrap();
        let sw = Swappable::named(&heap, "sw", 1).unwrap();
        let mut r = sw.reader().unwrap();
        let v = r.latest().unwrap();
        assert_eq!(v.generation(), 1);
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        0
    });
    assert_eq!(child.wait_status(), 128 + libc::SIGKILL);
    let one = allocated(&heap);
    sw.publish(&[2; 5000]).unwrap();
    assert_eq!(allocated(&heap), one, "the dead reader's version was freed");
}

/// A writer process publishes 3,000 versions, each filled with its generation; two
/// reader processes pin the latest again and again and check every byte.
fn readers_in_other_processes_see_whole_versions() {
    let name = unique_name("swap-procs");
    let _g = ShmGuard(name.clone());
    let heap = Heap::create(SegmentOptions::new().max_size(256 << 20).create_shm(&name).unwrap()).unwrap();
    let sw = Swappable::named(&heap, "sw", 1).unwrap();
    sw.publish(&[0; 4096]).unwrap();
    let attach = || Heap::attach(Segment::open_shm(&name, Access::ReadWrite).unwrap()).unwrap();
    let writer = fork(|| {
        let heap = attach();
        let sw = Swappable::named(&heap, "sw", 1).unwrap();
        for g in 2..=3000u64 {
            while let Err(SwapError::Busy) = sw.publish(&[g as u8; 4096]) {
                std::thread::yield_now();
            }
        }
        0
    });
    let readers: Vec<_> = (0..2)
        .map(|_| {
            fork(|| {
                let heap = attach();
                let sw = Swappable::named(&heap, "sw", 1).unwrap();
                let mut r = sw.reader().unwrap();
                let mut last = 0;
                while last < 3000 {
                    let v = r.latest().unwrap();
                    let bytes = v.to_vec().unwrap();
                    let g = v.generation();
                    let want = if g == 1 { 0 } else { g as u8 };
                    if g < last || bytes.iter().any(|&b| b != want) {
                        return 1;
                    }
                    last = g;
                }
                0
            })
        })
        .collect();
    let mut all = vec![writer];
    all.extend(readers);
    assert_eq!(wait_all(all, || ()), [0, 0, 0]);
}
