//! Typed offsets and the `ShmSafe` marker: what may live in shared memory, and how to name
//! it there.
//!
//! Layer: offset, above segment. Shared memory is mapped at a different address in every
//! process, so it holds offsets, never pointers. [`Offset<T>`] is a `u64` offset from the
//! segment base that remembers its type; [`ShmSafe`] marks the types that may be placed
//! at one.
//!
//! ```
//! use shmpool::{Offset, ShmSafe, SegmentOptions};
//!
//! #[derive(ShmSafe, Clone, Copy, Debug, PartialEq)]
//! #[repr(C)]
//! struct Point { x: u64, y: u64, next: Offset<Point> }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let seg = SegmentOptions::new().create_memfd("doc")?;
//! let at: Offset<Point> = Offset::from_raw(seg.data_start());
//! at.write(&seg, &Point { x: 1, y: 2, next: Offset::null() })?;
//! assert_eq!(at.read(&seg)?.y, 2);
//! # Ok(()) }
//! ```
//!
//! # Safety
//! `read` and `write` copy through the segment's checked byte accessors; the bytes are
//! reinterpreted as `T`, which `ShmSafe` promises is valid for any bit pattern.
#![allow(unsafe_code)]

use crate::segment::{AccessError, Segment};
use core::marker::PhantomData;
use core::mem::{align_of, size_of, MaybeUninit};
use core::sync::atomic::{AtomicI32, AtomicI64, AtomicU16, AtomicU32, AtomicU64, AtomicU8};

pub use shmpool_derive::ShmSafe;

/// Types that may live in shared memory and be read by any process.
///
/// The derive refuses what could not be shared: a struct without a fixed layout,
///
/// ```compile_fail
/// #[derive(shmpool::ShmSafe)]
/// struct NoRepr { x: u64 }
/// ```
///
/// a field holding a pointer,
///
/// ```compile_fail
/// #[derive(shmpool::ShmSafe)]
/// #[repr(C)]
/// struct Pointer { p: &'static u8 }
/// ```
///
/// a type not valid for every bit pattern,
///
/// ```compile_fail
/// #[derive(shmpool::ShmSafe)]
/// #[repr(C)]
/// struct Flag { on: bool }
/// ```
///
/// or padding, whose bytes are uninitialised:
///
/// ```compile_fail
/// #[derive(shmpool::ShmSafe)]
/// #[repr(C)]
/// struct Padded { a: u8, b: u64 }
/// ```
///
/// # Safety
/// The type holds no pointers or references (only offsets), owns nothing that needs its
/// `Drop` to run, has the same layout in every process (`#[repr(C)]`), and every bit
/// pattern is a valid value (so whatever another process wrote can be read). Derive it
/// with `#[derive(ShmSafe)]` on a `#[repr(C)]` struct of `ShmSafe` fields.
pub unsafe trait ShmSafe: Sized + 'static {}

macro_rules! shm_safe {
    ($($t:ty),*) => {$(
        // SAFETY: plain integers, floats and atomics: no pointers, any bits valid.
        unsafe impl ShmSafe for $t {}
    )*};
}
shm_safe!(
    u8,
    u16,
    u32,
    u64,
    u128,
    i8,
    i16,
    i32,
    i64,
    i128,
    f32,
    f64,
    (),
    AtomicU8,
    AtomicU16,
    AtomicU32,
    AtomicU64,
    AtomicI32,
    AtomicI64
);
// SAFETY: an array of ShmSafe values is ShmSafe element by element.
unsafe impl<T: ShmSafe, const N: usize> ShmSafe for [T; N] {}

/// The offset of a `T` in a segment.
#[repr(transparent)]
pub struct Offset<T> {
    off: u64,
    _type: PhantomData<fn() -> T>,
}

// SAFETY: a u64, any value valid.
unsafe impl<T: 'static> ShmSafe for Offset<T> {}

impl<T> Clone for Offset<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Offset<T> {}
impl<T> PartialEq for Offset<T> {
    fn eq(&self, other: &Self) -> bool {
        self.off == other.off
    }
}
impl<T> Eq for Offset<T> {}
impl<T> core::hash::Hash for Offset<T> {
    fn hash<H: core::hash::Hasher>(&self, h: &mut H) {
        self.off.hash(h)
    }
}
impl<T> core::fmt::Debug for Offset<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Offset<{}>({})", core::any::type_name::<T>(), self.off)
    }
}

impl<T> Offset<T> {
    /// The offset `off`, typed. Nothing is checked until it is used.
    pub const fn from_raw(off: u64) -> Self {
        Self { off, _type: PhantomData }
    }

    /// Offset 0: the segment header, never a valid `T`; use it as "none".
    pub const fn null() -> Self {
        Self::from_raw(0)
    }

    /// Whether this is [`Offset::null`].
    pub const fn is_null(self) -> bool {
        self.off == 0
    }

    /// The raw offset.
    pub const fn get(self) -> u64 {
        self.off
    }

    fn check(self, seg: &Segment) -> Result<(), AccessError> {
        if !self.off.is_multiple_of(align_of::<T>() as u64) {
            return Err(AccessError::Misaligned { offset: self.off, align: align_of::<T>() as u64 });
        }
        seg.check_range(self.off, size_of::<T>() as u64)
    }

    /// A pointer to the `T`, after checking bounds and alignment. Dereferencing it is the
    /// caller's business: other processes may be writing the same memory.
    pub fn resolve(self, seg: &Segment) -> Result<core::ptr::NonNull<T>, AccessError> {
        self.check(seg)?;
        Ok(seg.ptr_at(self.off, size_of::<T>() as u64)?.cast())
    }
}

impl<T: ShmSafe + Copy> Offset<T> {
    /// Copies the `T` out of the segment.
    pub fn read(self, seg: &Segment) -> Result<T, AccessError> {
        self.check(seg)?;
        let mut v = MaybeUninit::<T>::uninit();
        // SAFETY: the slice covers exactly the `T`'s bytes, which read_bytes fills
        // completely before `assume_init`.
        let bytes = unsafe { core::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), size_of::<T>()) };
        seg.read_bytes(self.off, bytes)?;
        // SAFETY: every byte was written, and any bit pattern is a valid `T` (ShmSafe).
        Ok(unsafe { v.assume_init() })
    }

    /// Copies `value` into the segment.
    pub fn write(self, seg: &Segment, value: &T) -> Result<(), AccessError> {
        self.check(seg)?;
        // SAFETY: reading the bytes of a `T` (padding included: ShmSafe types are plain
        // data whose padding may hold anything).
        let bytes = unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) };
        seg.write_bytes(self.off, bytes)
    }
}
