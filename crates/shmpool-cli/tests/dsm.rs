//! `shmpool dsm demo`: three node processes over loopback TCP increment one shared
//! counter with CASes through the coherence protocol; the sum is exact and node 0 reads
//! every node's page. Under a watchdog.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn three_node_processes_sum_a_shared_counter_exactly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmpool"))
        .args(["dsm", "demo", "--rounds", "300"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("shmpool dsm demo");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("watchdog: the demo ran longer than 90 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("counter 900"), "{text}");
    for i in 0..3 {
        assert!(text.contains(&format!("node {i} was here")), "{text}");
    }
}
