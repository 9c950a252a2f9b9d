//! Integration tests of the shmpool crate: one binary, one module per concern.
//!
//! The binary is also the program that multi-process tests start as an *unrelated*
//! process: when `SHMPOOL_TEST_PEER` is set, `main` runs that peer role instead of the
//! tests (see `support::peer`).

mod attach_errors;
mod buffer;
mod channel;
mod conformance;
mod crash_points;
mod heap;
mod heap_stress;
mod huge;
mod multiproc;
mod pages;
mod pools;
mod recovery;
mod support;
mod swap;
mod sync;
mod typed;

fn main() {
    if let Some(code) = support::peer::dispatch() {
        std::process::exit(code);
    }
    let mut args = libtest_mimic::Arguments::from_args();
    // Tests fork and change process-wide state (umask, the huge-page pool): one at a time
    // in a process, whatever runner starts it (nextest runs each in its own process).
    args.test_threads = Some(1);
    let mut trials = Vec::new();
    trials.extend(conformance::tests());
    trials.extend(attach_errors::tests());
    trials.extend(multiproc::tests());
    trials.extend(huge::tests());
    trials.extend(pages::tests());
    trials.extend(heap::tests());
    trials.extend(heap_stress::tests());
    trials.extend(recovery::tests());
    trials.extend(crash_points::tests());
    trials.extend(typed::tests());
    trials.extend(pools::tests());
    trials.extend(buffer::tests());
    trials.extend(sync::tests());
    trials.extend(channel::tests());
    trials.extend(swap::tests());
    libtest_mimic::run(&args, trials).exit();
}
