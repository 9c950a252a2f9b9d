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

/// Node 2 stops after 100 increments (holding what it holds) and is SIGKILLed: the
/// survivors do not hang.
/// Node 0 either reports the counter (at least the survivors' increments, at most all
/// of them) or that the counter's page died with node 2, never a stale sum.
#[test]
fn a_node_killed_mid_run_leaves_the_survivors_working() {
    let ports: Vec<String> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string())
        .collect();
    let peers = ports.join(",");
    let rounds = 20_000u64;
    let spawn = |id: usize| {
        let mut args =
            vec!["dsm".to_string(), "node".into(), "--id".into(), id.to_string(), "--peers".into()];
        args.extend([peers.clone(), "--rounds".into(), rounds.to_string()]);
        if id == 2 {
            args.extend(["--stall-after".into(), "100".into()]);
        }
        Command::new(env!("CARGO_BIN_EXE_shmpool"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("a node")
    };
    let (mut n0, mut n1, mut n2) = (spawn(0), spawn(1), spawn(2));
    std::thread::sleep(Duration::from_millis(300));
    n2.kill().unwrap();
    n2.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while n0.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = (n0.kill(), n1.kill());
            panic!("watchdog: node 0 did not finish after node 2 died");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = n1.kill();
    let _ = n1.wait();
    let out = n0.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        let counter: u64 = stdout
            .split("counter ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {stdout}"));
        assert!((2 * rounds..=2 * rounds + 100).contains(&counter), "{stdout}");
        assert!(stdout.contains("1 node(s) died"), "{stdout}");
    } else {
        assert!(stderr.contains("Lost"), "node 0 failed for another reason: {stderr}");
    }
}
