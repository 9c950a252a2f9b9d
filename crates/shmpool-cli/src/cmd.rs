//! `create`, `info`, `check`, `recover`, `ls` and `rm`: managing segments from the shell.

use crate::procs::mapped_files;
use crate::units::{human, utc};
use shmpool::segment::{AttachError, HeaderInfo, ShmName};
use shmpool::{Segment, SegmentOptions};
use std::path::{Path, PathBuf};

/// Where a segment lives: a POSIX shm name, or a file path.
#[derive(Debug, Clone)]
pub enum Target {
    Shm(ShmName),
    File(PathBuf),
}

impl Target {
    pub fn new(name: &str, file: bool) -> Result<Self, String> {
        if file {
            // Absolute, so it matches the paths in /proc/PID/maps.
            let path = std::path::absolute(name).map_err(|e| format!("{name}: {e}"))?;
            Ok(Self::File(path))
        } else {
            ShmName::new(name).map(Self::Shm).map_err(|e| e.to_string())
        }
    }

    /// The path of the backing file (`/dev/shm/NAME` for shm).
    fn path(&self) -> PathBuf {
        match self {
            Self::Shm(n) => Path::new("/dev/shm").join(n.bare()),
            Self::File(p) => p.clone(),
        }
    }

    /// Opens the segment.
    pub fn open(&self, access: shmpool::segment::Access) -> Result<Segment, String> {
        match self {
            Self::Shm(n) => Segment::open_shm(n.as_str(), access),
            Self::File(p) => Segment::open_file(p, access),
        }
        .map_err(|e| format!("{}: {e}", self.label()))
    }

    fn label(&self) -> String {
        match self {
            Self::Shm(n) => n.to_string(),
            Self::File(p) => p.display().to_string(),
        }
    }
}

pub fn create(target: &Target, size: u64, max_size: u64, mode: u32) -> Result<String, String> {
    let opts = SegmentOptions::new().size(size).max_size(max_size).mode(mode);
    let seg = match target {
        Target::Shm(n) => opts.create_shm(n.as_str()),
        Target::File(p) => opts.create_file(p),
    }
    .map_err(|e| format!("create {}: {e}", target.label()))?;
    Ok(format!(
        "created {} ({}): {} committed, {} reserved, mode {:04o}",
        target.label(),
        seg.kind(),
        human(seg.committed()),
        human(seg.reserved()),
        mode
    ))
}

fn inspect(target: &Target) -> Result<HeaderInfo, String> {
    let path = target.path();
    Segment::inspect_file(&path).map_err(|e| match e {
        AttachError::NotFound(_) => format!("{}: no such segment", target.label()),
        e => format!("{}: {e}", target.label()),
    })
}

pub fn info(target: &Target) -> Result<String, String> {
    let h = inspect(target)?;
    let path = target.path();
    let file_len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let f = &h.fields;
    let pids: Vec<u32> =
        mapped_files().remove(path.to_string_lossy().as_ref()).unwrap_or_default().into_iter().collect();
    let pct = 100.0 * h.committed as f64 / f.reserved_len as f64;
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<11} {v}\n"));
    line("segment", format!("{} ({})", target.label(), path.display()));
    line(
        "layout",
        format!("version {}, page size {}, id {:016x}", f.version, human(f.page_size), f.segment_id),
    );
    line(
        "committed",
        format!(
            "{} ({} bytes), {pct:.1}% of {} reserved",
            human(h.committed),
            h.committed,
            human(f.reserved_len)
        ),
    );
    line("file", format!("{} ({file_len} bytes)", human(file_len)));
    line("created", format!("{} by uid {}, pid {}", utc(f.created_ns), f.creator_uid, f.creator_pid));
    line(
        "huge pages",
        if f.flags & shmpool::segment::header::FLAG_HUGE_PAGES != 0 { "yes" } else { "no" }.into(),
    );
    line("mapped by", describe_pids(&pids));
    if let Some(heap) = heap_stats(target) {
        out.push_str(&heap);
    }
    Ok(out.trim_end().to_string())
}

/// The processes owning thread heaps: live ones, and dead ones whose heaps are orphaned.
fn owners(heap: &shmpool::heap::Heap) -> String {
    use std::collections::BTreeMap;
    let mut per: BTreeMap<u32, (bool, u32, u32)> = BTreeMap::new(); // pid -> (alive, active, abandoned)
    for t in heap.thread_heaps() {
        let e = per.entry(t.pid).or_insert((t.owner_alive, 0, 0));
        if t.active {
            e.1 += 1;
        } else {
            e.2 += 1;
        }
    }
    let procs = heap.processes();
    let dead = procs.iter().filter(|p| !p.alive).count();
    let mut out = format!(
        "  {:<17} {} of {} ({dead} dead)\n",
        "registered procs",
        procs.len(),
        shmpool::heap::MAX_PROCS
    );
    for (pid, (alive, active, abandoned)) in per {
        let what = match (alive, active) {
            (true, _) => "alive",
            (false, 0) => "exited",
            (false, _) => "dead: its active thread heaps are orphaned",
        };
        out.push_str(&format!(
            "  process {pid:<10} {what} ({active} active, {abandoned} abandoned thread heaps)\n"
        ));
    }
    out
}

/// Opens the segment's heap, read-only (which recovers nothing) or read-write (which
/// recovers what dead processes left, as every attach does).
fn open_heap(target: &Target, access: shmpool::segment::Access) -> Result<shmpool::heap::Heap, String> {
    let seg = target.open(access)?;
    shmpool::heap::Heap::attach(seg).map_err(|e| format!("{}: {e}", target.label()))
}

/// The invariant walk: the report, and whether the heap is whole. An error: the walk
/// could not run (no such segment, no heap in it).
pub fn check(target: &Target) -> Result<(String, bool), String> {
    let heap = open_heap(target, shmpool::segment::Access::ReadOnly)?;
    let dead = heap.processes().iter().filter(|p| !p.alive).count();
    let pending = if dead > 0 {
        format!("; {dead} dead processes to recover (`shmpool recover`)")
    } else {
        String::new()
    };
    Ok(match heap.check() {
        Ok(r) => (
            format!(
                "{}: clean: {} slabs, {} blocks in slabs ({} freed remotely, not yet collected), {} large blocks, {} of {} units free{pending}",
                target.label(),
                r.slabs,
                r.slab_blocks,
                r.pending_remote,
                r.large_blocks,
                r.free_units,
                r.units
            ),
            true,
        ),
        Err(e) => (format!("{}: broken: {e}", target.label()), false),
    })
}

/// Recovers what dead processes left (attaching read-write does), and reports it.
pub fn recover(target: &Target) -> Result<String, String> {
    // What there is to recover, seen without recovering it.
    let before = open_heap(target, shmpool::segment::Access::ReadOnly)?;
    let dead = before.processes().iter().filter(|p| !p.alive).count();
    let orphaned = before.thread_heaps().iter().filter(|t| t.active && !t.owner_alive).count();
    let free_before = before.stats().free_unit_bytes;
    drop(before);
    let heap = open_heap(target, shmpool::segment::Access::ReadWrite)?;
    let since = heap.recover(); // processes that died since the look above
    let freed = heap.stats().free_unit_bytes.saturating_sub(free_before);
    Ok(format!(
        "{}: recovered {} dead processes and {} thread heaps; {} came back to the pages",
        target.label(),
        dead + since.dead_processes as usize,
        orphaned + since.thread_heaps as usize,
        human(freed)
    ))
}

/// The heap's use, if the segment holds one (attached read-only).
fn heap_stats(target: &Target) -> Option<String> {
    let seg = target.open(shmpool::segment::Access::ReadOnly).ok()?;
    let heap = shmpool::heap::Heap::attach(seg).ok()?;
    let s = heap.stats();
    let mut out = String::from("\nheap\n");
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<17} {v}\n"));
    line("arena", format!("{} ({} in no slab or block)", human(s.arena_bytes), human(s.free_unit_bytes)));
    line("thread heaps", format!("{} of {}", s.thread_heaps, shmpool::heap::MAX_DESCS));
    line("large blocks", format!("{} ({})", s.large_blocks, human(s.large_bytes)));
    line("slab bytes in use", human(s.slab_used_bytes()));
    line("fragmentation", format!("{:.1}% of slab memory holds no live block", 100.0 * s.fragmentation()));
    out.push_str(&owners(&heap));
    if !s.classes.is_empty() {
        out.push_str(&format!("  {:>9} {:>6} {:>10} {:>10}\n", "class", "slabs", "used", "free"));
        for c in &s.classes {
            out.push_str(&format!(
                "  {:>9} {:>6} {:>10} {:>10}\n",
                human(c.size),
                c.slabs,
                c.used_blocks,
                c.free_blocks
            ));
        }
    }
    Some(out)
}

fn describe_pids(pids: &[u32]) -> String {
    match pids.len() {
        0 => "no process".into(),
        n => format!(
            "{n} process{} (pid {})",
            if n == 1 { "" } else { "es" },
            pids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The segments in `/dev/shm`: every entry whose header carries the shmpool magic.
pub fn ls() -> Result<String, String> {
    let dir = std::fs::read_dir("/dev/shm").map_err(|e| format!("/dev/shm: {e}"))?;
    let mut rows = Vec::new();
    let mapped = mapped_files();
    for entry in dir.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let mapped = mapped.get(path.to_string_lossy().as_ref()).map_or(0, |pids| pids.len());
        match Segment::inspect_file(&path) {
            Ok(h) => rows.push(format!(
                "{name:<32} {:>10} {:>10} {:>7}  {}",
                human(h.committed),
                human(h.fields.reserved_len),
                mapped,
                utc(h.fields.created_ns)
            )),
            // Ours, but damaged or from another version: list it so it can be removed.
            Err(
                e @ (AttachError::VersionMismatch { .. }
                | AttachError::Corrupted(_)
                | AttachError::BadMagic { .. }
                | AttachError::CommittedBeyondFile { .. }
                | AttachError::PageSizeMismatch { .. }),
            ) => rows.push(format!("{name:<32} {:>10} {:>10} {mapped:>7}  unusable: {e}", "-", "-")),
            Err(_) => {}
        }
    }
    rows.sort();
    let mut out =
        format!("{:<32} {:>10} {:>10} {:>7}  {}\n", "NAME", "COMMITTED", "RESERVED", "MAPPED", "CREATED");
    if rows.is_empty() {
        out.push_str("(no shmpool segments in /dev/shm)");
    }
    out.push_str(&rows.join("\n"));
    Ok(out.trim_end().to_string())
}

/// Removes a segment; refuses a file that is not a shmpool segment unless `force`.
pub fn rm(target: &Target, force: bool) -> Result<String, String> {
    if !force {
        if let Err(e) = Segment::inspect_file(target.path()) {
            return Err(match e {
                AttachError::NotFound(_) => format!("{}: no such segment", target.label()),
                e => format!("{}: {e}; not removed (use --force to remove it anyway)", target.label()),
            });
        }
    }
    let r = match target {
        Target::Shm(n) => Segment::unlink_shm(n.as_str()).map_err(|e| e.to_string()),
        Target::File(p) => std::fs::remove_file(p).map_err(|e| e.to_string()),
    };
    r.map_err(|e| format!("rm {}: {e}", target.label()))?;
    Ok(format!("removed {}", target.label()))
}
