//! The page-run allocator against a model: random allocations, frees, bad frees and
//! arena growth; after every step the invariant walk passes and the allocator agrees with
//! the model on every unit.

use crate::support::trial;
use libtest_mimic::Trial;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shmpool::pages::{Buddy, PagesError, UnitState, UnitStore, VecStore, NIL};
use std::collections::BTreeMap;

pub fn tests() -> Vec<Trial> {
    vec![
        trial("pages::random_ops_match_the_model", random_ops_match_the_model),
        trial("pages::runs_waste_no_units", runs_waste_no_units),
        trial("pages::rebuild_restores_scrambled_lists", rebuild_restores_scrambled_lists),
        trial("pages::check_catches_damage", check_catches_damage),
        trial("pages::repair_after_a_crash_at_every_store", repair_after_a_crash_at_every_store),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(u32),
    Free(usize),
    FreeBogus(u32),
    Extend(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u32..40).prop_map(Op::Alloc),
        3 => any::<usize>().prop_map(Op::Free),
        1 => (0u32..600).prop_map(Op::FreeBogus),
        1 => (1u32..64).prop_map(Op::Extend),
    ]
}

const CAP: u32 = 1024;

fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut b = Buddy::new(VecStore::new(CAP));
    b.extend(37); // an odd size: the arena is not a power of two
    let mut model: BTreeMap<u32, u32> = BTreeMap::new(); // head -> len
    for op in ops {
        match op {
            Op::Alloc(n) => match b.alloc(n, 7) {
                Ok(h) => {
                    prop_assert!(h + n <= b.units());
                    prop_assert!(model.iter().all(|(&mh, &ml)| h + n <= mh || mh + ml <= h), "overlap");
                    model.insert(h, n);
                }
                Err(PagesError::Exhausted { .. }) => {
                    // exhaustion is only allowed when no aligned free block of 2^ceil(log2 n) exists
                    let need = n.next_power_of_two();
                    let used = |u: u32| model.iter().any(|(&h, &l)| u >= h && u < h + l);
                    let fits = (0..b.units())
                        .step_by(need as usize)
                        .any(|s| s + need <= b.units() && !(s..s + need).any(used));
                    prop_assert!(!fits, "exhausted though {n} units fit");
                }
                Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
            },
            Op::Free(i) if !model.is_empty() => {
                let h = *model.keys().nth(i % model.len()).unwrap();
                prop_assert_eq!(b.free(h), Ok(model.remove(&h).unwrap()));
            }
            Op::Free(_) => {}
            Op::FreeBogus(u) => {
                if !model.contains_key(&u) {
                    prop_assert_eq!(b.free(u), Err(PagesError::NotARun(u)));
                }
            }
            Op::Extend(n) => {
                if b.units() + n <= CAP {
                    b.extend(b.units() + n);
                }
            }
        }
        b.check().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let used: u32 = model.values().sum();
        prop_assert_eq!(b.free_units(), u64::from(b.units() - used));
        for u in 0..b.units() {
            let expect = model.iter().find(|(&h, &l)| u >= h && u < h + l).map(|(&h, &l)| (h, l, 7));
            prop_assert_eq!(b.run_of(u), expect, "unit {}", u);
        }
    }
    Ok(())
}

fn random_ops_match_the_model() {
    let config = Config { cases: 300, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    runner.run(&proptest::collection::vec(op(), 1..120), run_ops).unwrap();
}

fn runs_waste_no_units() {
    let mut b = Buddy::new(VecStore::new(64));
    b.extend(64);
    let a = b.alloc(5, 1).unwrap();
    assert_eq!(b.free_units(), 59, "the 3 units past a 5-unit run went back");
    // ...as an aligned 1-unit and an aligned 2-unit block, handed out next
    let c = b.alloc(1, 1).unwrap();
    let d = b.alloc(2, 1).unwrap();
    assert_eq!((c, d), (a + 5, a + 6));
    assert_eq!(b.state(a), UnitState::Run { len: 5, tag: 1 });
    assert_eq!(b.state(a + 4), UnitState::Tail { head: a });
    for h in [a, c, d] {
        b.free(h).unwrap();
    }
    assert_eq!(b.free_units(), 64);
    assert_eq!(b.state(0), UnitState::Free { order: 6 }, "everything merged back into one block");
    b.check().unwrap();
}

fn rebuild_restores_scrambled_lists() {
    let mut b = Buddy::new(VecStore::new(256));
    b.extend(200);
    let runs: Vec<u32> = (1..20).map(|n| b.alloc(n % 7 + 1, 2).unwrap()).collect();
    for h in runs.iter().step_by(2) {
        b.free(*h).unwrap();
    }
    let free = b.free_units();
    let mut scrambled = b.store().clone();
    for k in 0..shmpool::pages::MAX_ORDER {
        shmpool::pages::UnitStore::set_head(&mut scrambled, k, NIL);
    }
    let mut b = Buddy::new(scrambled);
    assert!(b.check().is_err(), "lists lost: the walk must notice");
    b.rebuild_lists();
    b.check().unwrap();
    assert_eq!(b.free_units(), free);
}

fn check_catches_damage() {
    let mut b = Buddy::new(VecStore::new(64));
    b.extend(64);
    let h = b.alloc(4, 3).unwrap();
    b.check().unwrap();
    let mut s = b.store().clone();
    s.poke(h + 2, UnitState::Unknown.encode());
    assert!(Buddy::new(s).check().unwrap_err().0.contains("tail"));
    let mut s = b.store().clone();
    s.poke(h, UnitState::Run { len: 100, tag: 3 }.encode());
    assert!(Buddy::new(s).check().is_err());
}

/// A store that dies (panics) at its `die_at`-th write, as a process killed in the middle
/// of an update under the page lock would leave the shared table and lists.
#[derive(Clone)]
struct DyingStore {
    inner: VecStore,
    writes: u32,
    die_at: u32,
}

impl DyingStore {
    fn wrote(&mut self) {
        self.writes += 1;
        if self.writes == self.die_at {
            std::panic::panic_any(Died);
        }
    }
}

struct Died;

impl UnitStore for DyingStore {
    fn managed(&self) -> u32 {
        self.inner.managed()
    }
    fn set_managed(&mut self, units: u32) {
        self.wrote();
        self.inner.set_managed(units);
    }
    fn entry(&self, u: u32) -> u64 {
        self.inner.entry(u)
    }
    fn set_entry(&mut self, u: u32, word: u64) {
        self.wrote();
        self.inner.set_entry(u, word);
    }
    fn head(&self, order: usize) -> u32 {
        self.inner.head(order)
    }
    fn set_head(&mut self, order: usize, u: u32) {
        self.wrote();
        self.inner.set_head(order, u);
    }
    fn link(&self, u: u32) -> (u32, u32) {
        self.inner.link(u)
    }
    fn set_link(&mut self, u: u32, next: u32, prev: u32) {
        self.wrote();
        self.inner.set_link(u, next, prev);
    }
}

/// The runs a table marks: head -> (len, tag).
fn runs_of(b: &Buddy<VecStore>) -> BTreeMap<u32, (u32, u8)> {
    let mut runs = BTreeMap::new();
    let mut u = 0;
    while u < b.units() {
        match b.state(u) {
            UnitState::Run { len, tag } => {
                runs.insert(u, (len, tag));
                u += len;
            }
            _ => u += 1,
        }
    }
    runs
}

/// Every kind of update (a split, a run with a tail given back, a free that merges, a
/// growth), stopped at each of its stores in turn: `repair` restores every invariant,
/// keeps every other run as it was, and either completes the update or undoes it; no
/// unit is lost.
fn repair_after_a_crash_at_every_store() {
    // A fragmented arena: runs of several sizes, every other one freed.
    let mut base = Buddy::new(VecStore::new(256));
    base.extend(200);
    let heads: Vec<u32> = (0..24).map(|i| base.alloc(i % 5 + 1, 7).unwrap()).collect();
    for h in heads.iter().step_by(2) {
        base.free(*h).unwrap();
    }
    base.check().unwrap();
    let before = runs_of(&base);
    let victim = heads[1];
    type Update = fn(&mut Buddy<DyingStore>, u32);
    let updates: [(&str, Update); 5] = [
        ("alloc 1", |b, _| {
            b.alloc(1, 9).unwrap();
        }),
        ("alloc 5", |b, _| {
            b.alloc(5, 9).unwrap();
        }),
        ("alloc 16", |b, _| {
            b.alloc(16, 9).unwrap();
        }),
        ("free", |b, victim| {
            b.free(victim).unwrap();
        }),
        ("extend", |b, _| b.extend(256)),
    ];
    for (name, update) in updates {
        let mut die_at = 1;
        loop {
            let store = DyingStore { inner: base.store().clone(), writes: 0, die_at };
            let mut b = Buddy::new(store);
            let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| update(&mut b, victim)))
                .map_err(|e| assert!(e.is::<Died>(), "{name}: a real panic"))
                .is_err();
            let mut b = Buddy::new(b.store().inner.clone());
            b.repair();
            b.check().unwrap_or_else(|e| panic!("{name}, died at store {die_at}: {e}"));
            let after = runs_of(&b);
            for (h, run) in &before {
                if *h != victim || name != "free" {
                    assert_eq!(after.get(h), Some(run), "{name}, store {die_at}: run {h} changed");
                }
            }
            let new_runs = after.keys().filter(|h| !before.contains_key(h)).count();
            assert!(new_runs <= 1, "{name}, store {die_at}: {new_runs} runs appeared");
            let held: u64 = after.values().map(|&(len, _)| u64::from(len)).sum();
            assert_eq!(held + b.free_units(), u64::from(b.units()), "{name}, store {die_at}: units lost");
            if !died {
                break; // the update ran to its end
            }
            die_at += 1;
        }
        assert!(die_at > 2, "{name} stored too little to test");
    }
}
