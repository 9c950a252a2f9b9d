//! The `shmpool` binary as a user runs it: each command, its output and exit code, under
//! a watchdog.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const WATCHDOG: Duration = Duration::from_secs(60);

fn shmpool(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmpool"))
        .args(args)
        .env_remove("SHMPOOL_BENCH_NO_PIN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shmpool");
    let deadline = Instant::now() + WATCHDOG;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("watchdog: shmpool {args:?} ran longer than {WATCHDOG:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn unique(tag: &str) -> String {
    format!("shmpool-clitest-{tag}-{}", std::process::id())
}

/// Removes a file (or /dev/shm entry) when the test ends, pass or fail.
struct Remove(String);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A heap in a new shm segment (64 MiB reserved) named after `tag`, removed when the
/// returned guard drops.
fn shm_heap(tag: &str) -> (String, shmpool::heap::Heap, Remove) {
    let name = unique(tag);
    let rm = Remove(format!("/dev/shm/{name}"));
    let seg = shmpool::SegmentOptions::new().max_size(64 << 20).create_shm(&name).unwrap();
    (name, shmpool::heap::Heap::create(seg).unwrap(), rm)
}

/// Asserts a failure: the exit code, and exactly one line on stderr containing `needle`.
fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line, got: {err:?}");
    assert!(err.starts_with("shmpool: ") && err.contains(needle), "{err:?}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err:?}");
}

#[test]
fn demo_shows_four_processes_sharing_a_growing_segment() {
    let out = shmpool(&["demo", "--records", "1024"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}{}", text(&out.stderr));
    assert!(stdout.contains("4 worker processes shared one heap"), "{stdout}");
    for how in ["fork", "name /shmpool-demo-", "fd over a Unix socket"] {
        assert!(stdout.contains(how), "missing {how:?}: {stdout}");
    }
    assert!(
        stdout.contains(
            "2048 records of 256 B to 16 KiB were verified byte for byte by both readers and all 2048 freed"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("heap invariant walk: clean"), "{stdout}");
    let grew = stdout.lines().find(|l| l.contains("the heap grew the segment")).expect("growth line");
    let sizes: Vec<&str> =
        grew.split("segment ").nth(1).unwrap().split(" as").next().unwrap().split(" -> ").collect();
    assert_ne!(sizes[0], sizes[1], "the segment grew while they ran: {grew}");
    let pid = stdout.split("/shmpool-demo-").nth(1).and_then(|s| s.split(' ').next()).unwrap();
    assert!(!std::path::Path::new(&format!("/dev/shm/shmpool-demo-{pid}")).exists(), "demo cleans up");
}

#[test]
fn create_info_ls_rm_round_trip() {
    let name = unique("trip");
    let _rm = Remove(format!("/dev/shm/{name}"));
    let out = shmpool(&["create", &name, "--size", "64K", "--max-size", "16M", "--mode", "640"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let meta = std::fs::metadata(format!("/dev/shm/{name}")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o640);

    let info = text(&shmpool(&["info", &name]).stdout);
    assert!(info.contains("committed   64.0 KiB (65536 bytes)"), "{info}");
    assert!(info.contains("16.0 MiB reserved"), "{info}");
    assert!(info.contains("mapped by   no process"), "{info}");

    let ls = text(&shmpool(&["ls"]).stdout);
    let row = ls.lines().find(|l| l.starts_with(&name)).unwrap_or_else(|| panic!("{name} not in {ls}"));
    assert!(row.contains("64.0 KiB") && row.contains("16.0 MiB"), "{row}");

    assert_one_line_error(&shmpool(&["create", &name]), 1, "already exists");
    assert!(shmpool(&["rm", &name]).status.success());
    assert!(!std::path::Path::new(&format!("/dev/shm/{name}")).exists());
    assert_one_line_error(&shmpool(&["info", &name]), 1, "no such segment");
}

#[test]
fn info_on_a_corrupted_file_is_one_line() {
    let path = std::env::temp_dir().join(unique("corrupt"));
    let _rm = Remove(path.to_string_lossy().into_owned());
    std::fs::write(&path, b"SHMPOOL\0 but not really a header").unwrap();
    let p = path.to_str().unwrap();
    assert_one_line_error(&shmpool(&["info", "--file", p]), 1, "truncated");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    assert_one_line_error(&shmpool(&["info", "--file", p]), 1, "not a shmpool segment");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn rm_refuses_foreign_files_unless_forced() {
    let name = unique("foreign");
    let path = format!("/dev/shm/{name}");
    let _rm = Remove(path.clone());
    std::fs::write(&path, vec![1u8; 8192]).unwrap();
    assert_one_line_error(&shmpool(&["rm", &name]), 1, "--force");
    assert!(std::path::Path::new(&path).exists());
    let ls = text(&shmpool(&["ls"]).stdout);
    assert!(!ls.contains(&name), "ls lists only shmpool segments: {ls}");
    assert!(shmpool(&["rm", "--force", &name]).status.success());
    assert!(!std::path::Path::new(&path).exists());
}

#[test]
fn bad_command_lines_are_one_line_with_exit_2() {
    assert_one_line_error(&shmpool(&["create", "x", "--size", "12Q"]), 2, "unknown unit");
    assert_one_line_error(&shmpool(&["create", "x", "--mode", "999"]), 2, "invalid mode");
    assert_one_line_error(&shmpool(&["frobnicate"]), 2, "unrecognized subcommand");
    assert_one_line_error(&shmpool(&["info"]), 2, "<NAME>");
    assert_one_line_error(&shmpool(&["create", "a/b"]), 1, "contains '/'");
    assert_one_line_error(
        &shmpool(&["create", "x", "--size", "2M", "--max-size", "1M"]),
        1,
        "larger than max_size",
    );
}

#[test]
fn file_segments_work_from_the_cli() {
    let path = std::env::temp_dir().join(unique("file"));
    let _rm = Remove(path.to_string_lossy().into_owned());
    let p = path.to_str().unwrap();
    assert!(shmpool(&["create", "--file", p, "--size", "128K"]).status.success());
    let info = text(&shmpool(&["info", "--file", p]).stdout);
    assert!(info.contains("128.0 KiB"), "{info}");
    assert!(shmpool(&["rm", "--file", p]).status.success());
    assert!(!path.exists());
}

#[test]
fn info_and_ls_show_processes_mapping_the_segment() {
    let name = unique("mapped");
    let _rm = Remove(format!("/dev/shm/{name}"));
    let seg = shmpool::SegmentOptions::new().size(64 << 10).create_shm(&name).unwrap();
    let info = text(&shmpool(&["info", &name]).stdout);
    let me = std::process::id();
    assert!(info.contains(&format!("mapped by   1 process (pid {me})")), "{info}");
    let ls = text(&shmpool(&["ls"]).stdout);
    let row = ls.lines().find(|l| l.starts_with(&name)).unwrap_or_else(|| panic!("{name} not in {ls}"));
    assert_eq!(row.split_whitespace().nth(5), Some("1"), "MAPPED column: {row}");
    seg.unlink().unwrap();
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmpool"))
        .arg("ls")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before shmpool writes
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}: {}", out.status, text(&out.stderr));
    assert!(!text(&out.stderr).contains("panicked"));
}

#[test]
fn relative_file_paths_are_found_in_process_maps() {
    let dir = std::env::temp_dir();
    let name = unique("rel");
    let abs = dir.join(&name);
    let _rm = Remove(abs.to_string_lossy().into_owned());
    let seg = shmpool::SegmentOptions::new().size(64 << 10).create_file(&abs).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shmpool"))
        .args(["info", "--file", &name])
        .current_dir(&dir)
        .output()
        .unwrap();
    let info = text(&out.stdout);
    assert!(info.contains(&format!("(pid {})", std::process::id())), "{info}{}", text(&out.stderr));
    drop(seg);
}

/// Every BENCH.md line is printed, in its format, with numbers that parse; no timing is
/// asserted (speed is the benchmark's business, not the test's).
#[test]
fn bench_prints_every_workload_line() {
    let out = shmpool(&["bench", "--n", "2000", "--handoffs", "2000", "--reps", "5"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let expect: [(&str, &[&str]); 30] = [
        ("shmpool W1 ", &["ns_per_pair", "mpairs_s", "min", "max", "reps", "vs_mimalloc"]),
        ("mimalloc W1 ", &["ns_per_pair", "mpairs_s", "min", "max", "reps"]),
        ("shmpool W2 ", &["ns_per_op", "mops_s", "min", "max", "reps", "K", "R"]),
        ("mimalloc W2 ", &["ns_per_op", "mops_s", "K", "R"]),
        ("shmpool W3 ", &["agg_mpairs_s", "scaling", "one_proc_mpairs_s", "min", "max", "reps"]),
        ("shmpool W4 ", &["mblocks_s", "min", "max", "reps", "ring"]),
        ("shmpool W4-ring ", &["mblocks_s", "ring"]),
        ("shmpool W4-pool ", &["mblocks_s", "ring", "pool"]),
        ("shmpool W5 ", &["bytes_per_alloc", "overhead_ratio", "consumed_bytes"]),
        ("shmpool recovery ", &["ms_per_gib", "min", "max", "reps", "heap_mib"]),
        ("shmpool pool-slots ", &["ns_per_pair", "vs_w1"]),
        ("shmpool pool-bump-2p ", &["agg_mallocs_s", "scaling", "agg_vs_w3"]),
        ("shmpool chan-spsc-64B ", &["p50_ns", "p99_ns", "mmsgs_s", "vs_ring_p50"]),
        ("shmpool mutex-2p ", &["ns_per_pair", "vs_pthread"]),
        ("shmpool dsm-read ", &["p50_ns", "p99_ns", "vs_tcp_rtt", "vs_tcp_poll_rtt"]),
        ("shmpool dsm-upgrade ", &["p50_ns", "p99_ns", "vs_tcp_rtt", "vs_tcp_poll_rtt"]),
        ("shmpool dsm-pingpong ", &["transfers_s"]),
        ("shmpool dsm-seqread ", &["mib_s", "region_mib"]),
        ("shmpool dsm-read-signals ", &["p50_ns", "p99_ns", "vs_tcp_rtt", "vs_tcp_poll_rtt"]),
        ("shmpool dsm-read-sigbus ", &["p50_ns", "p99_ns", "vs_tcp_rtt", "vs_tcp_poll_rtt"]),
        ("shmpool dsm-pingpong-signals ", &["transfers_s"]),
        ("tcp ", &["rtt_ns"]),
        ("tcp-poll ", &["rtt_ns"]),
        ("shmpool dsm-read-unix ", &["p50_ns", "p99_ns", "vs_unix_rtt", "vs_unix_poll_rtt"]),
        ("shmpool dsm-pingpong-sigbus-unix ", &["transfers_s"]),
        ("shmpool dsm-seqread-signals-unix ", &["mib_s", "region_mib"]),
        ("unix ", &["rtt_ns"]),
        ("shmpool dsm-read-sigbus-busy ", &["p50_ns", "p99_ns", "vs_tcp_rtt", "vs_tcp_poll_rtt"]),
        ("shmpool dsm-pingpong-sigbus-busy-unix ", &["transfers_s"]),
        ("unix-signals-poll ", &["rtt_ns"]),
    ];
    for (prefix, keys) in expect {
        let line =
            stdout.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix}: {stdout}"));
        let fields: std::collections::HashMap<&str, f64> = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.parse::<f64>().unwrap_or_else(|_| panic!("{k}={v} in {line}"))))
            .collect();
        for k in keys {
            assert!(fields.get(k).is_some_and(|v| v.is_finite() && *v > 0.0), "{k} in {line}");
        }
    }
    // The two nodes keep to a CPU each where there are two.
    let tcp = stdout.lines().find(|l| l.starts_with("tcp ")).unwrap();
    let two = rustix::thread::sched_getaffinity(None).is_ok_and(|s| s.count() >= 2);
    assert_eq!(tcp.contains("nodes kept to CPUs"), two, "{tcp}");
    let w5 = stdout.lines().find(|l| l.starts_with("shmpool W5")).unwrap();
    let ratio: f64 = w5.split("overhead_ratio=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((1.0..1.05).contains(&ratio), "a million 64-byte blocks cost about 64 bytes each: {w5}");
}

#[test]
fn info_shows_heap_use() {
    let (name, heap, _rm) = shm_heap("heapinfo");
    let blocks: Vec<u64> = (0..100).map(|_| heap.alloc(100).unwrap()).collect();
    let big = heap.alloc(3 << 20).unwrap();
    let info = text(&shmpool(&["info", &name]).stdout);
    assert!(info.contains("large blocks      1 (3.0 MiB)"), "{info}");
    assert!(info.contains("thread heaps      1 of"), "{info}");
    let me = std::process::id();
    assert!(info.contains(&format!("process {me:<10} alive (1 active, 0 abandoned thread heaps)")), "{info}");
    let row = info.lines().find(|l| l.trim_start().starts_with("112 B")).unwrap_or_else(|| panic!("{info}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[2..4], ["1", "100"], "one slab, 100 blocks used: {row}");
    heap.free(big).unwrap();
    drop(blocks);
}

/// Not a test: the process `check_and_recover_after_a_killed_process` starts. With
/// `SHMPOOL_CLITEST_DIE_IN` set to a segment name, it allocates from its heap and dies by
/// SIGKILL, leaving a registered process and an active thread heap behind.
#[test]
#[ignore = "a helper process, started by check_and_recover_after_a_killed_process"]
fn helper_allocate_and_die() {
    let name = std::env::var("SHMPOOL_CLITEST_DIE_IN").expect("started by its test");
    let seg = shmpool::Segment::open_shm(&name, shmpool::segment::Access::ReadWrite).unwrap();
    let heap = shmpool::heap::Heap::attach(seg).unwrap();
    let kept: Vec<u64> = (0..300).map(|_| heap.alloc(100).unwrap()).collect();
    kept[100..].iter().for_each(|&off| heap.free(off).unwrap());
    // SAFETY: signals this process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

#[test]
fn check_and_recover_after_a_killed_process() {
    let (name, heap, _rm) = shm_heap("recover");
    heap.free(heap.alloc(64).unwrap()).unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_allocate_and_die", "--ignored", "--nocapture"])
        .env("SHMPOOL_CLITEST_DIE_IN", &name)
        .status()
        .unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));

    let out = shmpool(&["check", &name]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(report.contains("clean") && report.contains("1 dead processes to recover"), "{report}");
    let out = shmpool(&["recover", &name]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(report.contains("recovered 1 dead processes and 1 thread heaps"), "{report}");
    let out = shmpool(&["check", &name]);
    let report = text(&out.stdout);
    assert!(report.contains("clean: ") && !report.contains("dead"), "{report}");
    assert!(report.contains("100 blocks in slabs"), "the dead process's live blocks stay: {report}");

    // Damage: a slab's count of allocated blocks overwritten (its header's `used` word,
    // 72 bytes in). The walk says so, with exit code 1.
    let off = heap.alloc(64).unwrap();
    heap.segment().write_bytes((off & !0xffff) + 72, &[0xee; 4]).unwrap();
    let out = shmpool(&["check", &name]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("broken") && report.contains("used word"), "{report}");
    assert!(out.stderr.is_empty(), "the report says it all: {:?}", text(&out.stderr));

    // A segment without a heap: the walk cannot run.
    let bare = unique("bare");
    let _rm2 = Remove(format!("/dev/shm/{bare}"));
    assert_eq!(shmpool(&["create", &bare]).status.code(), Some(0));
    assert_one_line_error(&shmpool(&["check", &bare]), 2, "no heap");
    assert_one_line_error(&shmpool(&["check", "/no-such-segment-here"]), 2, "does not exist");
    drop(heap);
}
