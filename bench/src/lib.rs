//! Benchmarks of shmpool. `benches/` holds the criterion micro-benchmarks; this library
//! holds what they share.

/// A POSIX shm name unique to this process and `tag`.
pub fn unique_shm_name(tag: &str) -> String {
    format!("shmpool-bench-{tag}-{}", std::process::id())
}

/// Unlinks a POSIX shm name when dropped.
pub struct Unlink(pub String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = shmpool::Segment::unlink_shm(&self.0);
    }
}
