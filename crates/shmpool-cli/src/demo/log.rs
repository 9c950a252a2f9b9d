//! The demo's shared layout and its workers' loops: a control block and an append-only
//! log of 4 KiB records in one segment that grows as writers append.
//!
//! ```text
//!  4096  control: magic, records per writer, writers, next index, go, attached count
//!  4352  worker slots: 16 × 128 B of per-worker results (pid, role, counts, timings)
//!  8192  record 0 │ record 1 │ … each: ready word, writer, seq, publish time, checksum, payload
//! ```
//!
//! A writer reserves the next record index with one `fetch_add`, grows the segment if
//! the record lies past the committed size, fills the record and publishes it by storing
//! its ready word (Release). A reader walks every index in order: it waits until the
//! record is committed (so it never touches an unbacked page), then until it is ready
//! (Acquire), and verifies the payload byte for byte.

use shmpool::segment::HEADER_LEN;
use shmpool::Segment;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CTRL: u64 = HEADER_LEN;
const MAGIC: u64 = u64::from_ne_bytes(*b"DEMOLOG1");
const C_MAGIC: u64 = CTRL;
const C_PER_WRITER: u64 = CTRL + 8;
const C_WRITERS: u64 = CTRL + 16;
const C_NEXT: u64 = CTRL + 24;
const C_GO: u64 = CTRL + 32;
const C_ATTACHED: u64 = CTRL + 40;
const SLOTS: u64 = CTRL + 256;
const SLOT_LEN: u64 = 128;
/// Most workers the layout has slots for.
pub const MAX_WORKERS: u64 = 16;
const RECORDS: u64 = CTRL + 4096;
/// Bytes of one record.
pub const RECORD: u64 = 4096;
const PAYLOAD: u64 = 40;
/// The segment grows in steps of this size.
pub const GROW_STEP: u64 = 1 << 20;
/// How long a worker waits for the start signal or for a record.
const PATIENCE: Duration = Duration::from_secs(10);

/// Bytes of segment the control block and `records` records need.
pub fn bytes_for(records: u64) -> u64 {
    RECORDS + records * RECORD
}

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

/// Fields of a worker slot, in u64 words.
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
    Grows = 8,
    Bad = 9,
    Done = 10,
}

fn word(seg: &Segment, off: u64) -> &AtomicU64 {
    seg.atomic_u64(off).expect("demo layout lies in the committed segment")
}

/// One field of worker `slot`.
pub fn slot_field(seg: &Segment, slot: u64, f: Field) -> &AtomicU64 {
    word(seg, SLOTS + slot * SLOT_LEN + 8 * f as u64)
}

/// Writes the control block of a new demo segment.
pub fn init(seg: &Segment, writers: u64, per_writer: u64) {
    word(seg, C_PER_WRITER).store(per_writer, Ordering::Relaxed);
    word(seg, C_WRITERS).store(writers, Ordering::Relaxed);
    // SYNC: Release pairs with the Acquire check in `attach_worker`.
    word(seg, C_MAGIC).store(MAGIC, Ordering::Release);
}

/// Workers that have attached and are waiting to start.
pub fn attached(seg: &Segment) -> u64 {
    word(seg, C_ATTACHED).load(Ordering::Acquire)
}

/// Starts every waiting worker at once.
pub fn go(seg: &Segment) {
    // SYNC: Release pairs with the workers' Acquire spin on the go word.
    word(seg, C_GO).store(mono_ns(), Ordering::Release);
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

/// Runs worker `slot` to completion and records its results in its slot.
pub fn run_worker(seg: &Segment, slot: u64, role: Role, how: How) -> Result<(), String> {
    if slot >= MAX_WORKERS || seg.committed() < RECORDS || seg.load_u64(C_MAGIC) != Ok(MAGIC) {
        return Err("segment holds no demo layout (or the slot is out of range)".into());
    }
    let set = |f, v| slot_field(seg, slot, f).store(v, Ordering::Relaxed);
    set(Field::Pid, u64::from(std::process::id()));
    set(Field::Role, role as u64);
    set(Field::How, how as u64);
    word(seg, C_ATTACHED).fetch_add(1, Ordering::AcqRel);
    wait_for("the start signal", || word(seg, C_GO).load(Ordering::Acquire) != 0)?;
    let start = mono_ns();
    match role {
        Role::Writer => write_records(seg, slot),
        Role::Reader => read_records(seg, slot),
    }?;
    set(Field::ElapsedNs, mono_ns() - start);
    // SYNC: Release pairs with the parent's Acquire load of Done before it reads the slot.
    slot_field(seg, slot, Field::Done).store(1, Ordering::Release);
    Ok(())
}

fn write_records(seg: &Segment, slot: u64) -> Result<(), String> {
    let n = word(seg, C_PER_WRITER).load(Ordering::Relaxed);
    let mut rec = vec![0u8; RECORD as usize];
    let mut grows = 0;
    for seq in 0..n {
        let idx = word(seg, C_NEXT).fetch_add(1, Ordering::Relaxed);
        let off = RECORDS + idx * RECORD;
        if off + RECORD > seg.committed() {
            seg.grow_to((off + RECORD).next_multiple_of(GROW_STEP)).map_err(|e| e.to_string())?;
            grows += 1;
        }
        let sum = fill_payload(&mut rec[PAYLOAD as usize..], slot, seq);
        for (i, v) in [slot, seq, mono_ns(), sum].into_iter().enumerate() {
            rec[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_ne_bytes());
        }
        seg.write_bytes(off + 8, &rec[8..]).map_err(|e| e.to_string())?;
        // SYNC: Release pairs with the readers' Acquire load of the ready word.
        word(seg, off).store(1, Ordering::Release);
    }
    slot_field(seg, slot, Field::Records).store(n, Ordering::Relaxed);
    slot_field(seg, slot, Field::Bytes).store(n * RECORD, Ordering::Relaxed);
    slot_field(seg, slot, Field::Grows).store(grows, Ordering::Relaxed);
    Ok(())
}

fn read_records(seg: &Segment, slot: u64) -> Result<(), String> {
    let total =
        word(seg, C_PER_WRITER).load(Ordering::Relaxed) * word(seg, C_WRITERS).load(Ordering::Relaxed);
    let mut rec = vec![0u8; RECORD as usize];
    let mut expect = vec![0u8; (RECORD - PAYLOAD) as usize];
    let mut latencies = Vec::with_capacity(total as usize);
    let mut bad = 0;
    for idx in 0..total {
        let off = RECORDS + idx * RECORD;
        wait_for("a record to be committed", || seg.committed() >= off + RECORD)?;
        wait_for("a record to be published", || word(seg, off).load(Ordering::Acquire) != 0)?;
        let seen = mono_ns();
        seg.read_bytes(off, &mut rec).map_err(|e| e.to_string())?;
        let field = |i: usize| u64::from_ne_bytes(rec[8 + 8 * i..16 + 8 * i].try_into().expect("8 bytes"));
        let (writer, seq, published, sum) = (field(0), field(1), field(2), field(3));
        let expected_sum = fill_payload(&mut expect, writer, seq);
        if sum != expected_sum || rec[PAYLOAD as usize..] != expect[..] {
            bad += 1;
        }
        latencies.push(seen.saturating_sub(published));
    }
    latencies.sort_unstable();
    let pct = |p: usize| latencies.get(latencies.len().saturating_sub(1) * p / 100).copied().unwrap_or(0);
    let set = |f, v| slot_field(seg, slot, f).store(v, Ordering::Relaxed);
    set(Field::Records, total);
    set(Field::Bytes, total * RECORD);
    set(Field::P50Ns, pct(50));
    set(Field::P99Ns, pct(99));
    set(Field::Bad, bad);
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
