//! Which processes map which files, read once from `/proc/PID/maps` (proc(5)). Used by
//! `ls` and `info` until the process registry exists in the segment itself.

use std::collections::{BTreeSet, HashMap};

/// For every file mapped by any process we can see: the pids that map it.
pub fn mapped_files() -> HashMap<String, BTreeSet<u32>> {
    let mut files: HashMap<String, BTreeSet<u32>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return files };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(maps) = std::fs::read_to_string(entry.path().join("maps")) else { continue };
        for line in maps.lines() {
            // address perms offset dev inode path [(deleted)]
            let Some(path) = line.split_whitespace().nth(5) else { continue };
            if path.starts_with('/') {
                files.entry(path.to_string()).or_default().insert(pid);
            }
        }
    }
    files
}
