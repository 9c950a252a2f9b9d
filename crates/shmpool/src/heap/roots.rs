//! Named roots: `find_or_init::<T>(name, init)` lets unrelated processes meet at a value
//! by name — the first caller allocates and initialises it, every other caller (in any
//! process) gets the same offset.
//!
//! The table is open addressing over `MAX_ROOTS` entries. A caller claims an empty entry
//! with one CAS of its state word to `hash | its lock-holder tag | INIT`, fills it, and
//! publishes it with a Release store of `hash | READY`; a caller that finds `INIT` with its
//! hash waits for READY and then compares names (different names with equal hashes probe
//! on). A waiter that finds the initialiser dead (the tag names its registration) takes
//! the entry over with a CAS and initialises it itself: a process killed while
//! initialising a root wedges no one.
//!
//! # Safety
//! Views of the table are taken inside the committed metadata (see `raw.rs`).
#![allow(unsafe_code)]

use super::layout::{self, Root, MAX_ROOTS, MAX_ROOT_NAME, ROOT_INIT, ROOT_READY};
use super::{AllocError, Heap};
use crate::loom::Ordering;
use crate::offset::{Offset, ShmSafe};
use core::mem::{align_of, size_of};
use std::time::{Duration, Instant};

/// The bits of a lock-holder tag (`Inner::lock_holder`), below bit 31.
const TAG_MASK: u32 = (1 << 31) - 1;

/// How long `find_or_init` waits for another live process to finish initialising a root
/// (one that died is replaced at once).
pub const ROOT_INIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A root's state word: the name's hash above [`HASH_SHIFT`], the initialiser's
/// lock-holder tag (31 bits) while `INIT`, and the state in the low two bits.
const HASH_SHIFT: u32 = 33;

fn init_word(h: u64, tag: u32) -> u64 {
    h << HASH_SHIFT | u64::from(tag) << 2 | ROOT_INIT
}

/// Why a named root could not be found or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RootError {
    /// The name is empty or longer than the table holds.
    #[error("root name must be 1..={MAX_ROOT_NAME} bytes, got {0}")]
    BadName(usize),
    /// The root exists with a type of another size or alignment.
    #[error("root {name:?} holds a type of size {size} and alignment {align}")]
    TypeMismatch {
        /// The root's name.
        name: String,
        /// Size of the type it was created with.
        size: u32,
        /// Alignment of that type.
        align: u32,
    },
    /// Every entry of the root table is taken.
    #[error("all {MAX_ROOTS} named roots are taken")]
    TableFull,
    /// Another process is still initialising the root after the timeout.
    #[error("root {0:?} is still being initialised by another process")]
    Busy(String),
    /// The value could not be allocated.
    #[error(transparent)]
    Alloc(#[from] AllocError),
}

fn hash(name: &[u8]) -> u64 {
    let h =
        name.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (h | 1) >> HASH_SHIFT // 31 bits, never zero
}

impl Heap {
    fn root(&self, i: u32) -> &Root {
        let off = layout::roots_off(self.inner.descs_off) + u64::from(i) * size_of::<Root>() as u64;
        // SAFETY: the root table lies in the committed metadata, entries 8-aligned.
        unsafe { self.inner.base.at(off) }
    }

    /// The value named `name`, created with `init()` by the first caller in any process.
    pub fn find_or_init<T: ShmSafe + Copy>(
        &self,
        name: &str,
        init: impl FnOnce() -> T,
    ) -> Result<Offset<T>, RootError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_ROOT_NAME {
            return Err(RootError::BadName(bytes.len()));
        }
        let h = hash(bytes);
        let shape = (size_of::<T>() as u64) << 32 | align_of::<T>() as u64;
        let mut init = Some(init);
        let me = self.inner.lock_holder();
        for probe in 0..MAX_ROOTS {
            let root = self.root(((h + u64::from(probe)) % u64::from(MAX_ROOTS)) as u32);
            let deadline = Instant::now() + ROOT_INIT_TIMEOUT;
            loop {
                // SYNC: Acquire pairs with the Release store of READY below.
                let state = root.state.load(Ordering::Acquire);
                // An empty entry, or one whose initialiser died: ours to initialise.
                let free = state == 0
                    || (state >> HASH_SHIFT == h
                        && state & 3 == ROOT_INIT
                        && self.inner.holder_dead((state >> 2) as u32 & TAG_MASK));
                if free {
                    // SYNC: Acquire, as the load above (a taken-over entry's previous
                    // initialiser published nothing).
                    let claim = root.state.compare_exchange(
                        state,
                        init_word(h, me),
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    );
                    if claim.is_ok() {
                        let i = ((h + u64::from(probe)) % u64::from(MAX_ROOTS)) as u32;
                        if state != 0 {
                            self.drop_dead_value(i);
                        }
                        let make = init.take().expect("init is used once");
                        return self.fill_root(i, bytes, h, shape, make());
                    }
                    continue;
                }
                if state >> HASH_SHIFT != h {
                    break; // another name's entry: probe on
                }
                if state & 3 == ROOT_INIT {
                    if Instant::now() > deadline {
                        return Err(RootError::Busy(name.into()));
                    }
                    std::thread::sleep(Duration::from_micros(100));
                    continue;
                }
                if !self.root_named(root, bytes) {
                    break; // same hash, other name
                }
                let found = root.shape.load(Ordering::Relaxed);
                if found != shape {
                    return Err(RootError::TypeMismatch {
                        name: name.into(),
                        size: (found >> 32) as u32,
                        align: found as u32,
                    });
                }
                return Ok(Offset::from_raw(root.offset.load(Ordering::Relaxed)));
            }
        }
        Err(RootError::TableFull)
    }

    /// The offset of entry `i`'s value word (`Root::offset`), the slot its value is
    /// recorded in (`Heap::alloc_recorded`).
    fn value_slot(&self, i: u32) -> u64 {
        layout::roots_off(self.inner.descs_off) + u64::from(i) * size_of::<Root>() as u64 + 8
    }

    /// Entry `i` was taken over from an initialiser that died: the value it may have
    /// allocated goes back. Its journal is settled first (by recovery), so that the value
    /// word is final: it names the dead initialiser's value, or nothing.
    fn drop_dead_value(&self, i: u32) {
        let slot = self.value_slot(i);
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.inner.journal_names(slot) && Instant::now() < deadline {
            self.recover(); // its thread heap, unless another recoverer has it in hand
            std::thread::sleep(Duration::from_micros(200));
        }
        let root = self.root(i);
        let value = root.offset.load(Ordering::Relaxed);
        if value != 0 {
            let _ = self.free(value);
            root.offset.store(0, Ordering::Relaxed);
        }
    }

    fn fill_root<T: ShmSafe + Copy>(
        &self,
        i: u32,
        name: &[u8],
        h: u64,
        shape: u64,
        value: T,
    ) -> Result<Offset<T>, RootError> {
        let root = self.root(i);
        let release = |r: Result<Offset<T>, RootError>| {
            if r.is_err() {
                root.state.store(0, Ordering::Release); // give the entry back
            }
            r
        };
        // Recorded in the entry, so that an initialiser killed past this point leaves its
        // value where the next one finds it (`drop_dead_value`).
        let (size, align) = (size_of::<T>().max(1) as u64, align_of::<T>().max(16) as u64);
        let off = match self.alloc_recorded(self.value_slot(i), &root.offset, size, align) {
            Ok(off) => Offset::<T>::from_raw(off),
            Err(e) => return release(Err(e.into())),
        };
        if let Err(e) = off.write(self.segment(), &value) {
            let _ = self.free(off.get());
            root.offset.store(0, Ordering::Relaxed);
            return release(Err(RootError::Alloc(AllocError::OutOfMemory(e.to_string()))));
        }
        let mut padded = [0u8; MAX_ROOT_NAME];
        padded[..name.len()].copy_from_slice(name);
        for (w, chunk) in root.name.iter().zip(padded.chunks(8)) {
            w.store(u64::from_ne_bytes(chunk.try_into().expect("8 bytes")), Ordering::Relaxed);
        }
        root.name_len.store(name.len() as u64, Ordering::Relaxed);
        root.shape.store(shape, Ordering::Relaxed);
        crate::crash::point("root.init");
        // SYNC: Release pairs with the Acquire load in `find_or_init`: a caller that sees
        // READY sees the name, the shape, the offset and the value.
        root.state.store(h << HASH_SHIFT | ROOT_READY, Ordering::Release);
        Ok(off)
    }

    fn root_named(&self, root: &Root, name: &[u8]) -> bool {
        if root.name_len.load(Ordering::Relaxed) != name.len() as u64 {
            return false;
        }
        let mut padded = [0u8; MAX_ROOT_NAME];
        for (w, chunk) in root.name.iter().zip(padded.chunks_mut(8)) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        &padded[..name.len()] == name
    }
}
