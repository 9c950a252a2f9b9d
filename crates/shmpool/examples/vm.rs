//! A tiny bytecode VM whose shared instructions are exactly the `SharedCells`
//! operations, and processes that build a lock-free channel, a semaphore and a
//! one-shot message out of them.
//!
//! The instruction set has two groups:
//! - ordinary: registers `r0..r15`, a private memory of 256 words, arithmetic, jumps,
//!   `yield`, `out` (print a register) and `halt`: nothing another process can see;
//! - shared, one-to-one with `SharedCells`: `sload` (Acquire), `sstore` (Release),
//!   `scas` (AcqRel), `scas.sc` (SeqCst), `sfadd` (AcqRel), `sswap` (`swap_segment`,
//!   Release) and `sbarrier` (a SeqCst fence). A cell index out of range stops the VM
//!   with the cells' typed error.
//!
//! Run: `cargo run --release -p shmpool --example vm`. The parent creates a POSIX shm
//! segment with 64 cells and starts seven processes of itself, each running one VM
//! program; it checks what they print and exits non-zero if anything is wrong.

use shmpool::segment::Access;
use shmpool::sync::{CellError, SharedCells};
use shmpool::{Segment, SegmentOptions};
use std::process::{Command, Stdio};

/// One instruction: `op` and up to three register operands, or an immediate.
#[derive(Debug, Clone, Copy)]
enum Op {
    // ordinary
    Li(u8, i64),
    Add(u8, u8, u8),
    Addi(u8, u8, i64),
    Sub(u8, u8, u8),
    And(u8, u8, u8),
    Lp(u8, u8),
    Sp(u8, u8),
    Jmp(u32),
    Jz(u8, u32),
    Jnz(u8, u32),
    Jlt(u8, u8, u32),
    Yield,
    Out(u8),
    Halt,
    // shared: `SharedCells`, one each
    SLoad(u8, u8),
    SStore(u8, u8),
    SCas(u8, u8, u8, u8),
    SCasSc(u8, u8, u8, u8),
    SFadd(u8, u8, u8),
    SSwap(u8, u8, u8),
    SBarrier,
}

/// Bytecode: each instruction is one `u64` — the opcode in the low byte, three
/// register bytes, and a 32-bit immediate or jump target above.
fn encode(op: Op) -> u64 {
    let (code, a, b, c, imm): (u8, u8, u8, u8, i64) = match op {
        Op::Li(a, i) => (1, a, 0, 0, i),
        Op::Add(a, b, c) => (2, a, b, c, 0),
        Op::Addi(a, b, i) => (3, a, b, 0, i),
        Op::Sub(a, b, c) => (4, a, b, c, 0),
        Op::And(a, b, c) => (5, a, b, c, 0),
        Op::Lp(a, b) => (6, a, b, 0, 0),
        Op::Sp(a, b) => (7, a, b, 0, 0),
        Op::Jmp(t) => (8, 0, 0, 0, i64::from(t)),
        Op::Jz(a, t) => (9, a, 0, 0, i64::from(t)),
        Op::Jnz(a, t) => (10, a, 0, 0, i64::from(t)),
        Op::Jlt(a, b, t) => (11, a, b, 0, i64::from(t)),
        Op::Yield => (12, 0, 0, 0, 0),
        Op::Out(a) => (13, a, 0, 0, 0),
        Op::Halt => (14, 0, 0, 0, 0),
        Op::SLoad(a, b) => (32, a, b, 0, 0),
        Op::SStore(a, b) => (33, a, b, 0, 0),
        Op::SCas(a, b, c, d) => (34, a, b, c, i64::from(d)),
        Op::SCasSc(a, b, c, d) => (35, a, b, c, i64::from(d)),
        Op::SFadd(a, b, c) => (36, a, b, c, 0),
        Op::SSwap(a, b, c) => (37, a, b, c, 0),
        Op::SBarrier => (38, 0, 0, 0, 0),
    };
    u64::from(code) | u64::from(a) << 8 | u64::from(b) << 16 | u64::from(c) << 24 | (imm as u32 as u64) << 32
}

/// Why a VM stopped before `halt` (printed with `Debug`).
#[derive(Debug)]
#[allow(dead_code)]
enum Trap {
    Cell(CellError),
    BadOpcode(u64),
    PcOutOfRange(usize),
    Fuel,
}

/// Runs bytecode against the cells; returns what `out` printed.
fn run(code: &[u64], cells: &SharedCells) -> Result<Vec<i64>, Trap> {
    let mut r = [0i64; 16];
    let mut mem = [0i64; 256];
    let mut out = Vec::new();
    let mut pc = 0usize;
    for _ in 0..200_000_000u64 {
        let w = *code.get(pc).ok_or(Trap::PcOutOfRange(pc))?;
        let (a, b, c) = (((w >> 8) & 15) as usize, ((w >> 16) & 15) as usize, ((w >> 24) & 15) as usize);
        let imm = (w >> 32) as u32 as i32 as i64;
        let cell = |i: usize| r[i] as u32;
        pc += 1;
        match w & 0xff {
            1 => r[a] = imm,
            2 => r[a] = r[b].wrapping_add(r[c]),
            3 => r[a] = r[b].wrapping_add(imm),
            4 => r[a] = r[b].wrapping_sub(r[c]),
            5 => r[a] = r[b] & r[c],
            6 => r[a] = mem[(r[b] & 255) as usize],
            7 => mem[(r[a] & 255) as usize] = r[b],
            8 => pc = imm as usize,
            9 if r[a] == 0 => pc = imm as usize,
            10 if r[a] != 0 => pc = imm as usize,
            11 if r[a] < r[b] => pc = imm as usize,
            9..=11 => {}
            12 => std::thread::yield_now(),
            13 => out.push(r[a]),
            14 => return Ok(out),
            32 => r[a] = cells.load(cell(b)).map_err(Trap::Cell)? as i64,
            33 => cells.store(cell(a), r[b] as u64).map_err(Trap::Cell)?,
            34 | 35 => {
                // scas rd, cell, expected, new: rd = 1 if it swapped, else 0.
                let (exp, new) = (r[c] as u64, r[(imm & 15) as usize] as u64);
                let got = if w & 0xff == 34 {
                    cells.cas(cell(b), exp, new)
                } else {
                    cells.cas_seqcst(cell(b), exp, new)
                };
                r[a] = i64::from(got.map_err(Trap::Cell)?.is_ok());
            }
            36 => r[a] = cells.fetch_add(cell(b), r[c] as u64).map_err(Trap::Cell)? as i64,
            37 => r[a] = cells.swap_segment(cell(b), r[c] as u64).map_err(Trap::Cell)? as i64,
            38 => cells.barrier(),
            other => return Err(Trap::BadOpcode(other)),
        }
    }
    Err(Trap::Fuel)
}

/// A program under construction, with forward jumps patched by label.
#[derive(Default)]
struct Asm {
    ops: Vec<Op>,
}

impl Asm {
    fn here(&self) -> u32 {
        self.ops.len() as u32
    }

    fn op(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// Emits `op` (a jump) and returns its index, to patch its target later.
    fn jump(&mut self, op: Op) -> usize {
        self.ops.push(op);
        self.ops.len() - 1
    }

    fn patch(&mut self, at: usize, to: u32) {
        self.ops[at] = match self.ops[at] {
            Op::Jmp(_) => Op::Jmp(to),
            Op::Jz(a, _) => Op::Jz(a, to),
            Op::Jnz(a, _) => Op::Jnz(a, to),
            Op::Jlt(a, b, _) => Op::Jlt(a, b, to),
            other => other,
        };
    }

    fn finish(&self) -> Vec<u64> {
        self.ops.iter().copied().map(encode).collect()
    }
}

// The cells' map: the channel's head, tail and 8 slots; the semaphore, the count of
// processes inside and the most seen; the one-shot's state and value.
const HEAD: i64 = 0;
const TAIL: i64 = 1;
const RING: i64 = 2;
const SEM: i64 = 20;
const INSIDE: i64 = 21;
const MAX_INSIDE: i64 = 22;
const ONCE_STATE: i64 = 30;
const ONCE_VALUE: i64 = 31;
const MESSAGES: i64 = 5000;
const SEM_UNITS: i64 = 2;
const ROUNDS: i64 = 2000;

/// Sends 1..=MESSAGES through the ring: wait for room (tail - head < 8), write the slot,
/// publish the tail with a Release store.
fn producer() -> Vec<u64> {
    let mut p = Asm::default();
    p.op(Op::Li(1, 1))
        .op(Op::Li(2, MESSAGES + 1))
        .op(Op::Li(3, HEAD))
        .op(Op::Li(4, TAIL))
        .op(Op::Li(5, 7))
        .op(Op::Li(8, 8));
    let top = p.here();
    p.op(Op::SLoad(6, 3)).op(Op::SLoad(7, 4)).op(Op::Sub(9, 7, 6));
    let room = p.jump(Op::Jlt(9, 8, 0));
    p.op(Op::Yield).op(Op::Jmp(top));
    let write = p.here();
    p.patch(room, write);
    p.op(Op::And(10, 7, 5)).op(Op::Addi(10, 10, RING)).op(Op::SStore(10, 1));
    p.op(Op::Addi(7, 7, 1)).op(Op::SStore(4, 7)).op(Op::Addi(1, 1, 1));
    let again = p.jump(Op::Jlt(1, 2, 0));
    p.patch(again, top);
    p.op(Op::Halt);
    p.finish()
}

/// Receives MESSAGES values and prints their sum.
fn consumer() -> Vec<u64> {
    let mut p = Asm::default();
    p.op(Op::Li(1, 0))
        .op(Op::Li(2, MESSAGES))
        .op(Op::Li(3, HEAD))
        .op(Op::Li(4, TAIL))
        .op(Op::Li(5, 7))
        .op(Op::Li(11, 0));
    let top = p.here();
    p.op(Op::SLoad(7, 4)).op(Op::SLoad(6, 3)).op(Op::Sub(9, 7, 6));
    let has = p.jump(Op::Jnz(9, 0));
    p.op(Op::Yield).op(Op::Jmp(top));
    let read = p.here();
    p.patch(has, read);
    // The value goes through private memory on its way into the sum.
    p.op(Op::And(10, 6, 5)).op(Op::Addi(10, 10, RING)).op(Op::SLoad(12, 10));
    p.op(Op::Sp(10, 12)).op(Op::Lp(13, 10)).op(Op::Add(11, 11, 13));
    p.op(Op::Addi(6, 6, 1)).op(Op::SStore(3, 6)).op(Op::Addi(1, 1, 1));
    let again = p.jump(Op::Jlt(1, 2, 0));
    p.patch(again, top);
    p.op(Op::Out(11)).op(Op::Halt);
    p.finish()
}

/// ROUNDS times: take a unit (CAS the count down when positive), count itself inside,
/// raise the most-inside mark with a CAS loop, leave, give the unit back.
fn sem_worker() -> Vec<u64> {
    let mut p = Asm::default();
    p.op(Op::Li(1, 0))
        .op(Op::Li(2, ROUNDS))
        .op(Op::Li(3, SEM))
        .op(Op::Li(4, INSIDE))
        .op(Op::Li(5, MAX_INSIDE));
    p.op(Op::Li(13, 1)).op(Op::Li(14, -1));
    let acquire = p.here();
    p.op(Op::SLoad(6, 3));
    let positive = p.jump(Op::Jnz(6, 0));
    p.op(Op::Yield).op(Op::Jmp(acquire));
    let take = p.here();
    p.patch(positive, take);
    p.op(Op::Addi(7, 6, -1)).op(Op::SCas(8, 3, 6, 7));
    let got = p.jump(Op::Jnz(8, 0));
    p.op(Op::Jmp(acquire));
    let inside = p.here();
    p.patch(got, inside);
    p.op(Op::SFadd(9, 4, 13)).op(Op::Addi(9, 9, 1));
    let mark = p.here();
    p.op(Op::SLoad(10, 5));
    let higher = p.jump(Op::Jlt(10, 9, 0));
    let leave_jump = p.jump(Op::Jmp(0));
    let raise = p.here();
    p.patch(higher, raise);
    p.op(Op::SCasSc(11, 5, 10, 9));
    let raised = p.jump(Op::Jz(11, 0));
    p.patch(raised, mark);
    let leave = p.here();
    p.patch(leave_jump, leave);
    p.op(Op::Yield).op(Op::SFadd(12, 4, 14)).op(Op::SFadd(12, 3, 13)).op(Op::Addi(1, 1, 1));
    let again = p.jump(Op::Jlt(1, 2, 0));
    p.patch(again, acquire);
    p.op(Op::Halt);
    p.finish()
}

/// Fills the one-shot's value, then publishes state 1 (a Release store after a fence
/// for good measure: `sbarrier` is the set's seventh operation).
fn once_producer() -> Vec<u64> {
    let mut p = Asm::default();
    p.op(Op::Li(1, ONCE_VALUE)).op(Op::Li(2, 42)).op(Op::Li(3, ONCE_STATE)).op(Op::Li(4, 1));
    p.op(Op::SSwap(5, 1, 2)).op(Op::SBarrier).op(Op::SStore(3, 4)).op(Op::Halt);
    p.finish()
}

/// Waits for state 1 and takes it (CAS 1 → 2): prints the value, or 0 if another
/// consumer took it first.
fn once_consumer() -> Vec<u64> {
    let mut p = Asm::default();
    p.op(Op::Li(1, ONCE_STATE)).op(Op::Li(2, 1)).op(Op::Li(3, 2)).op(Op::Li(4, ONCE_VALUE)).op(Op::Li(0, 0));
    let wait = p.here();
    p.op(Op::SLoad(5, 1)).op(Op::Sub(6, 5, 3));
    let taken = p.jump(Op::Jz(6, 0));
    p.op(Op::Sub(6, 5, 2));
    let ready = p.jump(Op::Jz(6, 0));
    p.op(Op::Yield).op(Op::Jmp(wait));
    let take = p.here();
    p.patch(ready, take);
    p.op(Op::SCas(7, 1, 2, 3));
    let lost = p.jump(Op::Jz(7, 0));
    p.op(Op::SLoad(8, 4)).op(Op::Out(8)).op(Op::Halt);
    let none = p.here();
    p.patch(taken, none);
    p.patch(lost, none);
    p.op(Op::Out(0)).op(Op::Halt);
    p.finish()
}

fn program(role: &str) -> Vec<u64> {
    match role {
        "producer" => producer(),
        "consumer" => consumer(),
        "sem" => sem_worker(),
        "once-producer" => once_producer(),
        "once-consumer" => once_consumer(),
        other => panic!("no program {other}"),
    }
}

fn child(role: &str, shm: &str) -> i32 {
    let seg = Segment::open_shm(shm, Access::ReadWrite).expect("attach by name");
    let at = seg.data_start().next_multiple_of(64);
    let cells = SharedCells::open(seg, at).expect("the cells");
    match run(&program(role), &cells) {
        Ok(out) => {
            println!("{}", out.iter().map(i64::to_string).collect::<Vec<_>>().join(" "));
            0
        }
        Err(trap) => {
            eprintln!("{role}: trapped: {trap:?}");
            1
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--role" {
        std::process::exit(child(&args[2], &args[3]));
    }
    let shm = format!("shmpool-vm-{}", std::process::id());
    let seg = SegmentOptions::new().create_shm(&shm).expect("create the segment");
    let at = seg.data_start().next_multiple_of(64);
    let cells = SharedCells::create(seg, at, 64, 64).expect("64 cells");
    cells.store(SEM as u32, SEM_UNITS as u64).expect("a cell");
    // A cell past the end traps: the VM cannot reach memory the set does not hold.
    let stray = [encode(Op::Li(1, 64)), encode(Op::SLoad(2, 1)), encode(Op::Halt)];
    let trapped = matches!(run(&stray, &cells), Err(Trap::Cell(CellError::OutOfRange { index: 64, .. })));

    let roles =
        ["consumer", "producer", "sem", "sem", "sem", "once-consumer", "once-consumer", "once-producer"];
    let exe = std::env::current_exe().expect("this program");
    let children: Vec<_> = roles
        .iter()
        .map(|r| {
            Command::new(&exe).args(["--role", r, &shm]).stdout(Stdio::piped()).spawn().expect("a process")
        })
        .collect();
    let outputs: Vec<(String, bool)> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().expect("wait");
            (String::from_utf8_lossy(&o.stdout).trim().to_owned(), o.status.success())
        })
        .collect();
    let _ = Segment::unlink_shm(&shm);

    let sum: i64 = outputs[0].0.parse().unwrap_or(-1);
    let max_inside = cells.load(MAX_INSIDE as u32).unwrap_or(u64::MAX);
    let once: Vec<&str> = vec![outputs[5].0.as_str(), outputs[6].0.as_str()];
    let checks = [
        ("every process halted", outputs.iter().all(|o| o.1)),
        ("channel: 5000 values, their sum", sum == MESSAGES * (MESSAGES + 1) / 2),
        ("semaphore: never more than 2 inside", max_inside >= 1 && max_inside <= SEM_UNITS as u64),
        ("semaphore: every unit given back", cells.load(SEM as u32) == Ok(SEM_UNITS as u64)),
        (
            "one-shot: taken exactly once",
            once.iter().filter(|&&o| o == "42").count() == 1 && once.contains(&"0"),
        ),
        ("a cell out of range traps", trapped),
    ];
    println!("shmpool vm: {} processes ran VM programs on 64 shared cells", roles.len());
    println!("  channel sum {sum}, semaphore most inside {max_inside}, one-shot consumers printed {once:?}");
    let mut ok = true;
    for (what, passed) in checks {
        println!("  {} {what}", if passed { "ok  " } else { "FAIL" });
        ok &= passed;
    }
    std::process::exit(if ok { 0 } else { 1 });
}
