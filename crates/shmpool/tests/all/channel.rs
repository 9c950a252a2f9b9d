//! Channels between threads and processes: SPSC and MPMC rings and one-shot messages —
//! order and exactly-once delivery, full and empty rings, timeouts, ends taken, peers
//! that drop or are killed (at any instant, and at the MPMC crash points), buffer
//! handles carried zero-copy, and random operations against a queue model.

use crate::support::{fork, trial, wait_all, SharedHeap};
use libtest_mimic::Trial;
use proptest::prelude::*;
use shmpool::buffer::{Buffer, MemoryHandle};
use shmpool::channel::{
    ChannelError, Mpmc, Oneshot, OneshotError, RecvError, SendError, Spsc, TryRecvError, TrySendError,
};
use shmpool::heap::Heap;
use shmpool::sync::SharedCells;
use shmpool::SegmentOptions;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("channel::spsc_keeps_order_across_laps", spsc_keeps_order_across_laps),
        trial("channel::spsc_ends_are_taken_one_at_a_time", spsc_ends_are_taken_one_at_a_time),
        trial("channel::spsc_streams_between_processes", spsc_streams_between_processes),
        trial("channel::spsc_timeouts", spsc_timeouts),
        trial(
            "channel::spsc_a_dropped_sender_disconnects_after_the_last_value",
            spsc_a_dropped_sender_disconnects,
        ),
        trial("channel::spsc_a_killed_peer_is_detected", spsc_a_killed_peer_is_detected),
        trial("channel::buffer_handles_cross_a_channel_without_copies", buffer_handles_cross_a_channel),
        trial("channel::mpmc_delivers_each_value_once_across_processes", mpmc_delivers_each_value_once),
        trial("channel::mpmc_timeouts_and_disconnection", mpmc_timeouts_and_disconnection),
        trial("channel::crash::mpmc.writing", mpmc_survives_a_sender_killed_writing),
        trial("channel::crash::mpmc.reading", mpmc_survives_a_receiver_killed_reading),
        trial("channel::oneshot_hands_one_value_once", oneshot_hands_one_value_once),
        trial("channel::two_processes_ping_pong_by_name", two_processes_ping_pong_by_name),
        trial("channel::random_spsc_ops_match_a_queue", random_spsc_ops_match_a_queue),
        trial("channel::random_mpmc_ops_match_a_queue", random_mpmc_ops_match_a_queue),
    ]
}

fn heap() -> Heap {
    Heap::create(SegmentOptions::new().max_size(64 << 20).create_memfd("ch").unwrap()).unwrap()
}

fn die() {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
}

fn spsc_keeps_order_across_laps() {
    let h = heap();
    let ch = Spsc::<u64>::create_in(&h, 4).unwrap();
    let (mut tx, mut rx) = (ch.sender().unwrap(), ch.receiver().unwrap());
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    let mut next = 0;
    for lap in 0..100u64 {
        let n = 1 + lap % 4;
        for k in 0..n {
            tx.try_send(lap * 10 + k).unwrap();
        }
        assert_eq!(ch.len() as u64, n);
        if n == 4 {
            assert_eq!(tx.try_send(7), Err(TrySendError::Full(7)));
        }
        for k in 0..n {
            assert_eq!(rx.try_recv(), Ok(lap * 10 + k));
            next += 1;
        }
    }
    assert_eq!(next, 250);
    assert!(ch.is_empty());
    assert!(matches!(Spsc::<u64>::create_in(&h, 3), Err(shmpool::pools::PoolError::InvalidGeometry(_))));
    assert!(matches!(Spsc::<u32>::open(&h, ch.offset()), Err(shmpool::pools::PoolError::Mismatch(_))));
}

fn spsc_ends_are_taken_one_at_a_time() {
    let h = heap();
    let ch = Spsc::<u32>::create_in(&h, 8).unwrap();
    let tx = ch.sender().unwrap();
    assert_eq!(ch.sender().err(), Some(ChannelError::Taken("sending")));
    drop(tx);
    let _tx = ch.sender().expect("free again after the drop");
    let _rx = ch.receiver().unwrap();
    assert_eq!(ch.receiver().err(), Some(ChannelError::Taken("receiving")));
}

/// A child sends 200,000 numbers through a ring of 64 with blocking sends; the parent
/// receives them in order with blocking receives.
fn spsc_streams_between_processes() {
    let sh = SharedHeap::new("spsc-stream");
    let ch = Spsc::<u64>::named(&sh.heap, "ch", 64).unwrap();
    let mut rx = ch.receiver().unwrap();
    let child = fork(|| {
        let heap = sh.attach();
        let ch = Spsc::<u64>::named(&heap, "ch", 64).unwrap();
        let mut tx = ch.sender().unwrap();
        for i in 0..200_000u64 {
            tx.send(i * 3).unwrap();
        }
        0
    });
    for i in 0..200_000u64 {
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(i * 3));
    }
    assert_eq!(child.wait(), 0);
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Err(RecvError::Disconnected), "the sender dropped");
}

fn spsc_timeouts() {
    let h = heap();
    let ch = Spsc::<u64>::create_in(&h, 1).unwrap();
    let (mut tx, mut rx) = (ch.sender().unwrap(), ch.receiver().unwrap());
    let t = Instant::now();
    assert_eq!(rx.recv_timeout(Duration::from_millis(40)), Err(RecvError::Timeout));
    assert!(t.elapsed() >= Duration::from_millis(40));
    tx.send(1).unwrap();
    assert_eq!(tx.send_timeout(2, Duration::from_millis(40)), Err(SendError::Timeout(2)));
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(rx.recv(), Ok(1));
            assert_eq!(rx.recv(), Ok(2));
        });
        tx.send_timeout(2, Duration::from_secs(20)).expect("room made by the receiver");
    });
}

fn spsc_a_dropped_sender_disconnects() {
    let h = heap();
    let ch = Spsc::<u64>::create_in(&h, 8).unwrap();
    let mut rx = ch.receiver().unwrap();
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "no sender yet is not a disconnection");
    let mut tx = ch.sender().unwrap();
    tx.try_send(5).unwrap();
    drop(tx);
    assert_eq!(rx.try_recv(), Ok(5), "values sent before the drop still arrive");
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    drop(rx);
    // A sender made with no receiver waits for one: a full ring is only full.
    let mut tx = ch.sender().unwrap();
    for v in 0..8 {
        tx.try_send(v).unwrap();
    }
    assert_eq!(tx.try_send(8), Err(TrySendError::Full(8)));
    // A receiver that comes and goes is seen, and its going is a disconnection.
    drop(ch.receiver().unwrap());
    assert_eq!(tx.try_send(8), Err(TrySendError::Disconnected(8)));
}

/// A child holding the sending end is killed while the parent waits: the parent's
/// receive is told `Disconnected`, not left waiting; then a killed receiver, likewise
/// for a sender waiting on a full ring. A new process can take a dead holder's end.
fn spsc_a_killed_peer_is_detected() {
    let sh = SharedHeap::new("spsc-kill");
    let ch = Spsc::<u64>::named(&sh.heap, "ch", 2).unwrap();
    let mut rx = ch.receiver().unwrap();
    let child = fork(|| {
        let heap = sh.attach();
        let ch = Spsc::<u64>::named(&heap, "ch", 2).unwrap();
        let mut tx = ch.sender().unwrap();
        tx.send(1).unwrap();
        die();
        0
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(1));
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Err(RecvError::Disconnected));
    assert_eq!(child.wait_status(), 128 + libc::SIGKILL);
    drop(rx);
    let mut tx = ch.sender().expect("the dead sender's end is free");
    let child = fork(|| {
        let heap = sh.attach();
        let ch = Spsc::<u64>::named(&heap, "ch", 2).unwrap();
        let _rx = ch.receiver().unwrap();
        die();
        0
    });
    assert_eq!(child.wait_status(), 128 + libc::SIGKILL);
    let mut v = 0;
    let end = loop {
        match tx.send_timeout(v, Duration::from_secs(20)) {
            Ok(()) => v += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(end, SendError::Disconnected(2), "two fit, then the dead receiver is found");
}

/// Buffers go through an SPSC ring as 48-byte handles; the child reads the parent's
/// bytes in place and writes its answer into them.
fn buffer_handles_cross_a_channel() {
    let sh = SharedHeap::new("ch-buf");
    let ch = Spsc::<MemoryHandle>::named(&sh.heap, "bufs", 16).unwrap();
    let back = Spsc::<MemoryHandle>::named(&sh.heap, "back", 16).unwrap();
    let before = sh.heap.check().unwrap().allocated_bytes;
    let child = fork(|| {
        let heap = sh.attach();
        let ch = Spsc::<MemoryHandle>::named(&heap, "bufs", 16).unwrap();
        let back = Spsc::<MemoryHandle>::named(&heap, "back", 16).unwrap();
        let (mut rx, mut tx) = (ch.receiver().unwrap(), back.sender().unwrap());
        for i in 0..100u64 {
            let b = Buffer::from_handle(&heap, rx.recv().unwrap()).unwrap();
            if b.meta() != i || b.to_vec().unwrap() != vec![i as u8; 4096] {
                return 1;
            }
            b.write(0, b"seen").unwrap();
            tx.send(b.into_handle()).unwrap();
        }
        0
    });
    let (mut tx, mut rx) = (ch.sender().unwrap(), back.receiver().unwrap());
    for i in 0..100u64 {
        let b = Buffer::from_slice(&sh.heap, &[i as u8; 4096]).unwrap().with_meta(i);
        tx.send(b.into_handle()).unwrap();
        let got = Buffer::from_handle(&sh.heap, rx.recv_timeout(Duration::from_secs(20)).unwrap()).unwrap();
        let mut head = [0u8; 4];
        got.read(0, &mut head).unwrap();
        assert_eq!(&head, b"seen");
    }
    assert_eq!(child.wait(), 0);
    assert_eq!(sh.heap.check().unwrap().allocated_bytes, before, "every buffer freed");
}

/// Three sender processes and two receiver processes on one ring of 16: each value is
/// received once (counts and sums in shared cells), and each receiver sees each sender's
/// values in the order sent.
fn mpmc_delivers_each_value_once() {
    const PER: u64 = 20_000;
    let sh = SharedHeap::new("mpmc");
    let _ch = Mpmc::<u64>::named(&sh.heap, "ch", 16).unwrap();
    let cells = SharedCells::named(&sh.heap, "sums", 2, 2).unwrap();
    let mut children = Vec::new();
    for p in 1..=3u64 {
        let sh = &sh;
        children.push(fork(move || {
            let heap = sh.attach();
            let ch = Mpmc::<u64>::named(&heap, "ch", 16).unwrap();
            let tx = ch.sender().unwrap();
            for k in 0..PER {
                tx.send(p << 32 | k).unwrap();
            }
            0
        }));
    }
    for _ in 0..2 {
        let sh = &sh;
        children.push(fork(move || {
            let heap = sh.attach();
            let ch = Mpmc::<u64>::named(&heap, "ch", 16).unwrap();
            let cells = SharedCells::named(&heap, "sums", 2, 2).unwrap();
            let rx = ch.receiver().unwrap();
            let mut last = [None::<u64>; 4];
            loop {
                match rx.recv_timeout(Duration::from_secs(20)) {
                    Ok(v) => {
                        let (p, k) = ((v >> 32) as usize, v & 0xffff_ffff);
                        if last[p].is_some_and(|l| l >= k) {
                            return 2;
                        }
                        last[p] = Some(k);
                        cells.fetch_add(0, 1).unwrap();
                        cells.fetch_add(1, v).unwrap();
                    }
                    Err(RecvError::Disconnected) => return 0,
                    Err(RecvError::Timeout) => return 3,
                }
            }
        }));
    }
    assert_eq!(wait_all(children, || ()), [0; 5]);
    let sum: u64 = (1..=3u64).map(|p| PER * (p << 32) + PER * (PER - 1) / 2).sum();
    assert_eq!((cells.load(0).unwrap(), cells.load(1).unwrap()), (3 * PER, sum));
}

fn mpmc_timeouts_and_disconnection() {
    let h = heap();
    let ch = Mpmc::<u32>::create_in(&h, 2).unwrap();
    let rx = ch.receiver().unwrap();
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(rx.recv_timeout(Duration::from_millis(30)), Err(RecvError::Timeout));
    let tx = ch.sender().unwrap();
    let tx2 = ch.sender().unwrap();
    tx.try_send(1).unwrap();
    tx2.try_send(2).unwrap();
    assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
    assert_eq!(tx.send_timeout(3, Duration::from_millis(30)), Err(SendError::Timeout(3)));
    drop((tx, tx2));
    assert_eq!((rx.try_recv(), rx.try_recv()), (Ok(1), Ok(2)));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(rx.recv(), Err(RecvError::Disconnected));
    drop(rx);
    // A sender made with no receiver waits for one; one that comes and goes is seen.
    let tx = ch.sender().unwrap();
    tx.try_send(9).unwrap();
    tx.try_send(9).unwrap();
    assert_eq!(tx.send_timeout(10, Duration::from_millis(30)), Err(SendError::Timeout(10)));
    drop(ch.receiver().unwrap());
    assert_eq!(tx.send(10), Err(SendError::Disconnected(10)));
}

/// A sender dies at `mpmc.writing` (its slot claimed, its value not published): the
/// receiver frees the slot and gets every other value; nothing wedges.
fn mpmc_survives_a_sender_killed_writing() {
    let sh = SharedHeap::new("mpmc-w");
    let ch = Mpmc::<u64>::named(&sh.heap, "ch", 4).unwrap();
    let rx = ch.receiver().unwrap();
    let tx = ch.sender().unwrap();
    let child = fork(|| {
        let heap = sh.attach();
        let ch = Mpmc::<u64>::named(&heap, "ch", 4).unwrap();
        let tx = ch.sender().unwrap();
        shmpool::crash::arm("mpmc.writing");
        let _ = tx.send(666);
        0
    });
    assert_eq!(child.wait_status(), 128 + libc::SIGKILL);
    for v in 0..10u64 {
        tx.send_timeout(v, Duration::from_secs(20)).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(v), "past the dead sender's slot");
    }
}

/// A receiver dies at `mpmc.reading` on a full ring: a sender waiting for room gets it
/// (the dead receiver's slot is freed, its value lost), and values flow on.
fn mpmc_survives_a_receiver_killed_reading() {
    let sh = SharedHeap::new("mpmc-r");
    let ch = Mpmc::<u64>::named(&sh.heap, "ch", 2).unwrap();
    let tx = ch.sender().unwrap();
    tx.send(1).unwrap();
    tx.send(2).unwrap();
    let child = fork(|| {
        let heap = sh.attach();
        let ch = Mpmc::<u64>::named(&heap, "ch", 2).unwrap();
        let rx = ch.receiver().unwrap();
        shmpool::crash::arm("mpmc.reading");
        let _ = rx.recv();
        0
    });
    assert_eq!(child.wait_status(), 128 + libc::SIGKILL);
    let rx = ch.receiver().unwrap();
    tx.send_timeout(3, Duration::from_secs(20)).expect("the dead receiver's slot is freed");
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(2));
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(3));
}

fn oneshot_hands_one_value_once() {
    let sh = SharedHeap::new("oneshot");
    let once = Oneshot::<[u64; 4]>::named(&sh.heap, "once").unwrap();
    assert_eq!(once.try_recv(), Err(TryRecvError::Empty));
    let child = fork(|| {
        let heap = sh.attach();
        let once = Oneshot::<[u64; 4]>::named(&heap, "once").unwrap();
        match once.recv_timeout(Duration::from_secs(20)) {
            Ok([1, 2, 3, 4]) => i32::from(once.try_recv() != Err(TryRecvError::Disconnected)),
            _ => 1,
        }
    });
    std::thread::sleep(Duration::from_millis(20));
    once.send([1, 2, 3, 4]).unwrap();
    assert_eq!(once.send([5; 4]), Err(OneshotError::AlreadySent([5; 4])));
    assert_eq!(child.wait(), 0);
    assert_eq!(once.recv(), Err(RecvError::Disconnected), "taken already");
    let later = Oneshot::<u8>::create_in(&sh.heap).unwrap();
    assert_eq!(later.recv_timeout(Duration::from_millis(30)), Err(RecvError::Timeout));
}

#[derive(Debug, Clone)]
enum Op {
    Send(u64),
    Recv,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(prop_oneof![any::<u64>().prop_map(Op::Send), Just(Op::Recv)], 1..300)
}

fn run(f: impl Fn(Vec<Op>) -> Result<(), TestCaseError>) {
    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig { cases: 64, ..Default::default() });
    runner.run(&ops(), f).unwrap();
}

fn random_spsc_ops_match_a_queue() {
    let h = heap();
    run(|ops| {
        let ch = Spsc::<u64>::create_in(&h, 8).unwrap();
        let (mut tx, mut rx) = (ch.sender().unwrap(), ch.receiver().unwrap());
        let mut model = VecDeque::new();
        for op in ops {
            match op {
                Op::Send(v) if model.len() < 8 => {
                    prop_assert_eq!(tx.try_send(v), Ok(()));
                    model.push_back(v);
                }
                Op::Send(v) => prop_assert_eq!(tx.try_send(v), Err(TrySendError::Full(v))),
                Op::Recv => prop_assert_eq!(rx.try_recv().ok(), model.pop_front()),
            }
            prop_assert_eq!(ch.len() as usize, model.len());
        }
        drop((tx, rx));
        let _ = h.free(ch.offset());
        Ok(())
    });
}

fn random_mpmc_ops_match_a_queue() {
    let h = heap();
    run(|ops| {
        let ch = Mpmc::<u64>::create_in(&h, 5).unwrap();
        let (tx, rx) = (ch.sender().unwrap(), ch.receiver().unwrap());
        let mut model = VecDeque::new();
        for op in ops {
            match op {
                Op::Send(v) if model.len() < 5 => {
                    prop_assert_eq!(tx.try_send(v), Ok(()));
                    model.push_back(v);
                }
                Op::Send(v) => prop_assert_eq!(tx.try_send(v), Err(TrySendError::Full(v))),
                Op::Recv => prop_assert_eq!(rx.try_recv().ok(), model.pop_front()),
            }
        }
        drop((tx, rx));
        let _ = h.free(ch.offset());
        Ok(())
    });
}

/// Two processes ping-pong over two rings each of them finds by name (the benchmark's
/// pattern): every echo comes back, twice in a row with fresh processes.
fn two_processes_ping_pong_by_name() {
    let sh = SharedHeap::new("pingpong");
    for _ in 0..2 {
        let side = |a: bool| {
            let sh = &sh;
            fork(move || {
                let heap = sh.attach();
                let names = if a { ["ab", "ba"] } else { ["ba", "ab"] };
                let out = Spsc::<u64>::named(&heap, names[0], 64).unwrap();
                let inn = Spsc::<u64>::named(&heap, names[1], 64).unwrap();
                let (mut tx, mut rx) = (out.sender().unwrap(), inn.receiver().unwrap());
                for i in 0..20_000u64 {
                    if a {
                        tx.send(i).unwrap();
                        match rx.recv() {
                            Ok(v) if v == i => {}
                            other => {
                                eprintln!("a: {i}: {other:?}");
                                return 1;
                            }
                        }
                    } else {
                        match rx.recv() {
                            Ok(v) => tx.send(v).unwrap(),
                            other => {
                                eprintln!("b: {i}: {other:?}");
                                return 2;
                            }
                        }
                    }
                }
                0
            })
        };
        let (a, b) = (side(true), side(false));
        assert_eq!(wait_all(vec![a, b], || ()), [0, 0]);
    }
}
