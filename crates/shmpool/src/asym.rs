//! Asymmetric barriers: a fence that only the rare side pays for.
//!
//! Dekker-style handshakes (a store, then a load of the other side's word) need a full
//! fence on both sides. When one side is hot (a channel's send and receive) and the
//! other rare (a peer going to sleep), the hot side can make do with a compiler fence if
//! the rare side runs membarrier(2) `MEMBARRIER_CMD_GLOBAL_EXPEDITED`: that makes every
//! running thread of every registered process execute a full memory barrier, so either
//! the hot side's store is seen by the rare side's load, or the hot side's later load
//! sees the rare side's store (after Linux `sys_membarrier`, as userspace RCU uses it).
//!
//! A process registers once (`MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED`, again after a
//! fork). Where membarrier is unavailable, both sides use SeqCst fences; under loom,
//! both sides are SeqCst fences, which is what membarrier guarantees.

use crate::heap::tls;
use crate::loom::{fence, Ordering};
use core::sync::atomic::{AtomicU64, Ordering as StdOrdering};

/// The fork generation this process registered in, plus one (0: not tried); or
/// `FAILED` if registering failed.
static REGISTERED: AtomicU64 = AtomicU64::new(0);
const FAILED: u64 = u64::MAX;

/// Registers this process for the rare side's barrier; whether the hot side may use a
/// compiler fence.
pub(crate) fn register() -> bool {
    if cfg!(loom) {
        return true;
    }
    tls::init();
    let gen = tls::fork_gen() + 1;
    match REGISTERED.load(StdOrdering::Relaxed) {
        FAILED => false,
        g if g == gen => true,
        _ => {
            use rustix::thread::{membarrier, MembarrierCommand};
            let ok = membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok();
            REGISTERED.store(if ok { gen } else { FAILED }, StdOrdering::Relaxed);
            ok
        }
    }
}

/// The hot side's barrier between its store and its load.
#[inline(always)]
pub(crate) fn light(asymmetric: bool) {
    if asymmetric && !cfg!(loom) {
        // SYNC: a compiler fence: the rare side's membarrier supplies the hardware one.
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    } else {
        // SYNC: SeqCst fence, pairing with the rare side's `heavy`.
        fence(Ordering::SeqCst);
    }
}

/// The rare side's barrier between its store and its load.
#[cold]
pub(crate) fn heavy(asymmetric: bool) {
    if asymmetric && !cfg!(loom) {
        use rustix::thread::{membarrier, MembarrierCommand};
        if membarrier(MembarrierCommand::GlobalExpedited).is_ok() {
            return;
        }
    }
    // SYNC: SeqCst fence, pairing with the hot side's `light` (or membarrier failed:
    // the waits' bounded sleeps cover a peer that used a compiler fence meanwhile).
    fence(Ordering::SeqCst);
}
