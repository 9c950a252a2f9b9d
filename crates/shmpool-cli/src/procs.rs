//! Which processes map a file, read from `/proc/PID/maps` (proc(5)). Used by `ls` and
//! `info` until the process registry exists in the segment itself.

use std::collections::BTreeSet;

/// Pids of the processes that map `path` (a `/dev/shm` entry or a file), sorted.
pub fn mapping_pids(path: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut pids = BTreeSet::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(maps) = std::fs::read_to_string(entry.path().join("maps")) else { continue };
        let maps_it = maps.lines().any(|line| {
            let p = line.split_whitespace().nth(5).unwrap_or("");
            p == path && line.split_whitespace().nth(6).is_none_or(|s| s == "(deleted)")
        });
        if maps_it {
            pids.insert(pid);
        }
    }
    pids.into_iter().collect()
}
