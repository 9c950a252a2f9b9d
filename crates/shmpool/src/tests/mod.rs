//! loom models of the crate's lock-free protocols (`RUSTFLAGS="--cfg loom"`).
#[cfg(loom)]
mod loom_committed;
#[cfg(loom)]
mod loom_pages;
#[cfg(loom)]
mod loom_remote;
