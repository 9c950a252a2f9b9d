//! Two growers and a reader race on the committed size. Each page of the modelled
//! backing is an `UnsafeCell` that a grower initialises under the growth lock (the
//! stand-in for `flock` + `fallocate`); the reader touches every page below the size it
//! loads. loom fails the model if any such touch is not ordered after the write that
//! backed the page, or if the size ever decreases or ends below the larger request.
#![allow(unsafe_code)]

use crate::loom::UnsafeCell;
use crate::segment::committed::Committed;
use loom::sync::{Arc, Mutex};
use loom::thread;

const PAGES: usize = 3;

struct Backing {
    lock: Mutex<usize>, // pages backed so far: the file length
    pages: [UnsafeCell<u8>; PAGES],
    committed: Committed,
}

fn grow(b: &Backing, to: usize) {
    let mut len = b.lock.lock().unwrap();
    while *len < to {
        b.pages[*len].with_mut(|p| unsafe_write(p, 1));
        *len += 1;
    }
    drop(len);
    b.committed.publish(to as u64);
}

fn unsafe_write(p: *mut u8, v: u8) {
    // SAFETY: loom checks this access; the lock makes the grower its only writer.
    unsafe { *p = v }
}

fn read(p: *const u8) -> u8 {
    // SAFETY: loom checks this access is ordered after the write that backed the page.
    unsafe { *p }
}

#[test]
fn readers_only_touch_backed_pages() {
    loom::model(|| {
        let b = Arc::new(Backing {
            lock: Mutex::new(1),
            pages: [UnsafeCell::new(1), UnsafeCell::new(0), UnsafeCell::new(0)],
            committed: Committed::new(1),
        });
        let growers: Vec<_> = [2usize, 3]
            .into_iter()
            .map(|to| {
                let b = b.clone();
                thread::spawn(move || grow(&b, to))
            })
            .collect();
        let mut last = 0;
        for _ in 0..2 {
            let c = b.committed.load() as usize;
            assert!(c >= last, "committed went down");
            last = c;
            for page in &b.pages[..c] {
                assert_eq!(page.with(read), 1, "touched an unbacked page");
            }
        }
        for g in growers {
            g.join().unwrap();
        }
        assert_eq!(b.committed.load(), PAGES as u64, "ends at the larger request");
    });
}
