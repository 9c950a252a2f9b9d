//! loom models of the crate's lock-free protocols (`RUSTFLAGS="--cfg loom"`).
#[cfg(loom)]
mod loom_bitmap;
#[cfg(loom)]
mod loom_channel;
#[cfg(loom)]
mod loom_committed;
#[cfg(loom)]
mod loom_pages;
#[cfg(loom)]
mod loom_remote;
#[cfg(loom)]
mod loom_stack;
#[cfg(loom)]
mod loom_swap;
#[cfg(loom)]
mod loom_sync;

/// Explores every interleaving with up to three preemptions (tokio's models use 2–3;
/// unbounded, three threads take hours).
#[cfg(loom)]
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}
