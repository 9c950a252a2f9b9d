//! The demo's shared structures and its workers' loops, on the shared heap.
//!
//! A control block (found through the named root `demo/control`) holds the run's
//! parameters, a slot array of record offsets, and each worker's results. A writer
//! allocates a record of a random size from the heap (which grows the segment as
//! needed), fills it, and publishes its offset in the next slot (Release). A reader walks
//! every slot in order, waits for it (Acquire), verifies the record byte for byte, and
//! the last of the readers to finish with a record frees it — a free by a process other
//! than the one that allocated it.
//!
//! ```text
//!  record: seq │ writer │ publish time │ checksum │ size │ readers left │ payload …
//! ```

use shmpool::heap::Heap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MAGIC: u64 = u64::from_ne_bytes(*b"DEMOLOG2");
/// Control block words.
const C_MAGIC: u64 = 0;
const C_PER_WRITER: u64 = 1;
const C_WRITERS: u64 = 2;
const C_READERS: u64 = 3;
const C_NEXT: u64 = 4;
const C_GO: u64 = 5;
const C_ATTACHED: u64 = 6;
const C_SLOTS: u64 = 7;
const SLOT_WORDS: u64 = 16;
const FIRST_SLOT: u64 = 16;
/// Most workers the control block has result slots for.
pub const MAX_WORKERS: u64 = 16;
const CONTROL_WORDS: u64 = FIRST_SLOT + MAX_WORKERS * SLOT_WORDS;
/// Record header words; the payload follows.
const HEADER: u64 = 6;
/// Record sizes are drawn from this range.
const MIN_RECORD: u64 = 256;
const MAX_RECORD: u64 = 16 << 10;
/// How long a worker waits for the start signal or for a record.
const PATIENCE: Duration = Duration::from_secs(10);

/// What a worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Writer = 1,
    Reader = 2,
}

/// How a worker reached the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    Fork = 1,
    Name = 2,
    Fd = 3,
}

/// Fields of a worker's result slot.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    Pid = 0,
    Role = 1,
    How = 2,
    Records = 3,
    Bytes = 4,
    ElapsedNs = 5,
    P50Ns = 6,
    P99Ns = 7,
    Freed = 8,
    Bad = 9,
    Done = 10,
}

/// The demo's control block in a heap.
pub struct Log<'h> {
    heap: &'h Heap,
    ctl: u64,
}

impl<'h> Log<'h> {
    /// Creates the control block and slot array for `writers` × `per_writer` records.
    pub fn create(heap: &'h Heap, writers: u64, readers: u64, per_writer: u64) -> Result<Self, String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let ctl = heap.alloc_zeroed(8 * CONTROL_WORDS).map_err(|x| e(&x))?;
        let slots = heap.alloc_zeroed(8 * writers * per_writer).map_err(|x| e(&x))?;
        heap.find_or_init("demo/control", || ctl).map_err(|x| e(&x))?;
        let log = Log { heap, ctl };
        for (w, v) in
            [(C_PER_WRITER, per_writer), (C_WRITERS, writers), (C_READERS, readers), (C_SLOTS, slots)]
        {
            log.word(w).store(v, Ordering::Relaxed);
        }
        // SYNC: Release pairs with the Acquire check in `open`.
        log.word(C_MAGIC).store(MAGIC, Ordering::Release);
        Ok(log)
    }

    /// Finds the control block of a demo heap.
    pub fn open(heap: &'h Heap) -> Result<Self, String> {
        let root = heap.find_or_init::<u64>("demo/control", || 0).map_err(|e| e.to_string())?;
        let ctl = root.read(heap.segment()).map_err(|e| e.to_string())?;
        let log = Log { heap, ctl };
        if ctl == 0 || heap.usable_size(ctl).map_or(true, |n| n < 8 * CONTROL_WORDS) {
            return Err("the segment holds no demo control block".into());
        }
        // SYNC: Acquire pairs with the Release in `create`.
        if log.word(C_MAGIC).load(Ordering::Acquire) != MAGIC {
            return Err("the demo control block is not initialised".into());
        }
        Ok(log)
    }

    fn word(&self, i: u64) -> &AtomicU64 {
        self.heap.segment().atomic_u64(self.ctl + 8 * i).expect("the control block is a live heap block")
    }

    fn slot(&self, idx: u64) -> &AtomicU64 {
        let slots = self.word(C_SLOTS).load(Ordering::Relaxed);
        self.heap.segment().atomic_u64(slots + 8 * idx).expect("the slot array is a live heap block")
    }

    /// One field of worker `slot`'s results.
    pub fn field(&self, slot: u64, f: Field) -> &AtomicU64 {
        self.word(FIRST_SLOT + slot * SLOT_WORDS + f as u64)
    }

    /// Workers that have attached and wait for the start.
    pub fn attached(&self) -> u64 {
        self.word(C_ATTACHED).load(Ordering::Acquire)
    }

    /// Starts every waiting worker at once.
    pub fn go(&self) {
        // SYNC: Release pairs with the workers' Acquire spin on the go word.
        self.word(C_GO).store(1, Ordering::Release);
    }

    fn record_word(&self, rec: u64, i: u64) -> &AtomicU64 {
        self.heap.segment().atomic_u64(rec + 8 * i).expect("a live record")
    }
}

/// CLOCK_MONOTONIC in ns: one clock for every process on the host.
pub fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("gave up waiting for {what}"));
        }
        std::thread::yield_now();
    }
    Ok(())
}

/// Runs worker `slot` to completion and records its results.
pub fn run_worker(heap: &Heap, slot: u64, role: Role, how: How) -> Result<(), String> {
    if slot >= MAX_WORKERS {
        return Err(format!("worker slot {slot} is out of range"));
    }
    let log = Log::open(heap)?;
    let set = |f, v| log.field(slot, f).store(v, Ordering::Relaxed);
    set(Field::Pid, u64::from(std::process::id()));
    set(Field::Role, role as u64);
    set(Field::How, how as u64);
    log.word(C_ATTACHED).fetch_add(1, Ordering::AcqRel);
    wait_for("the start signal", || log.word(C_GO).load(Ordering::Acquire) != 0)?;
    let start = mono_ns();
    match role {
        Role::Writer => write_records(&log, slot),
        Role::Reader => read_records(&log, slot),
    }?;
    set(Field::ElapsedNs, mono_ns() - start);
    // SYNC: Release pairs with the parent's Acquire load of Done before it reads the slot.
    log.field(slot, Field::Done).store(1, Ordering::Release);
    Ok(())
}

fn write_records(log: &Log<'_>, slot: u64) -> Result<(), String> {
    let heap = log.heap;
    let n = log.word(C_PER_WRITER).load(Ordering::Relaxed);
    let readers = log.word(C_READERS).load(Ordering::Relaxed);
    let mut rng = slot.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = Vec::new();
    let mut bytes = 0;
    for seq in 0..n {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let size = MIN_RECORD + rng % (MAX_RECORD - MIN_RECORD);
        let rec = heap.alloc(size).map_err(|e| e.to_string())?;
        buf.resize((size - 8 * HEADER) as usize, 0);
        let sum = fill_payload(&mut buf, slot, seq);
        heap.segment().write_bytes(rec + 8 * HEADER, &buf).map_err(|e| e.to_string())?;
        for (i, v) in [seq, slot, mono_ns(), sum, size, readers].into_iter().enumerate() {
            log.record_word(rec, i as u64).store(v, Ordering::Relaxed);
        }
        let idx = log.word(C_NEXT).fetch_add(1, Ordering::Relaxed);
        // SYNC: Release pairs with the readers' Acquire load of the slot: the record's
        // contents are visible before its offset is.
        log.slot(idx).store(rec, Ordering::Release);
        bytes += size;
    }
    log.field(slot, Field::Records).store(n, Ordering::Relaxed);
    log.field(slot, Field::Bytes).store(bytes, Ordering::Relaxed);
    Ok(())
}

fn read_records(log: &Log<'_>, slot: u64) -> Result<(), String> {
    let heap = log.heap;
    let total = log.word(C_PER_WRITER).load(Ordering::Relaxed) * log.word(C_WRITERS).load(Ordering::Relaxed);
    let mut buf = Vec::new();
    let mut expect = Vec::new();
    let mut latencies = Vec::with_capacity(total as usize);
    let (mut bad, mut freed, mut bytes) = (0, 0, 0);
    for idx in 0..total {
        wait_for("a record", || log.slot(idx).load(Ordering::Acquire) != 0)?;
        let rec = log.slot(idx).load(Ordering::Acquire);
        let seen = mono_ns();
        let w = |i| log.record_word(rec, i).load(Ordering::Relaxed);
        let (seq, writer, published, sum, size) = (w(0), w(1), w(2), w(3), w(4));
        buf.resize((size - 8 * HEADER) as usize, 0);
        expect.resize(buf.len(), 0);
        heap.segment().read_bytes(rec + 8 * HEADER, &mut buf).map_err(|e| e.to_string())?;
        if fill_payload(&mut expect, writer, seq) != sum || buf != expect {
            bad += 1;
        }
        latencies.push(seen.saturating_sub(published));
        bytes += size;
        // SYNC: AcqRel: the last reader's free happens after every reader's reads.
        if log.record_word(rec, 5).fetch_sub(1, Ordering::AcqRel) == 1 {
            heap.free(rec).map_err(|e| e.to_string())?;
            freed += 1;
        }
    }
    latencies.sort_unstable();
    let pct = |p: usize| latencies.get(latencies.len().saturating_sub(1) * p / 100).copied().unwrap_or(0);
    let set = |f, v| log.field(slot, f).store(v, Ordering::Relaxed);
    set(Field::Records, total);
    set(Field::Bytes, bytes);
    set(Field::P50Ns, pct(50));
    set(Field::P99Ns, pct(99));
    set(Field::Bad, bad);
    set(Field::Freed, freed);
    Ok(())
}

/// Fills `buf` with the payload of record (`writer`, `seq`) and returns its checksum.
fn fill_payload(buf: &mut [u8], writer: u64, seq: u64) -> u64 {
    let mut s = writer << 32 ^ seq;
    let mut sum = 0xcbf2_9ce4_8422_2325u64;
    for chunk in buf.chunks_mut(8) {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_ne_bytes()[..chunk.len()]);
        sum = (sum ^ z).wrapping_mul(0x0000_0100_0000_01b3);
    }
    sum
}
