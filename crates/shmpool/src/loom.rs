//! The atomics facade: every atomic and `UnsafeCell` of the crate comes from here, so
//! that `RUSTFLAGS="--cfg loom"` swaps in loom's model-checked versions and a lock-free
//! structure can be explored exhaustively (after tokio `src/loom/mod.rs`).
//!
//! Structures that live in a real shared mapping are `#[repr(C)]` and use these types
//! directly; under loom they are built in ordinary memory for the model instead, and the
//! layout assertions that pin their size do not apply.
#![allow(unused_imports, dead_code)]

#[cfg(loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::atomic::{fence, AtomicU32, AtomicU64, Ordering},
};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// `UnsafeCell` with loom's `with`/`with_mut` access API, so code reads the same in
/// both builds.
#[cfg(not(loom))]
#[derive(Debug, Default)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
