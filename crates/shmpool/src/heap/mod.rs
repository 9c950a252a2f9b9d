//! The shared heap (in progress): size classes so far.
pub mod class;
