//! `shmpool dsm demo` and `shmpool dsm node`: three node processes over loopback TCP (or
//! Unix sockets) map
//! one distributed region, put the heap on it and build one list; each sees every note
//! intact and the heap comes back to its start; and two nodes in two network
//! namespaces (hosts, to the network) do the same. Under a watchdog. (The crate's own
//! tests kill a node mid-run and check litmus tests and histories.)

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmpool"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("shmpool");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("watchdog: shmpool {args:?} ran longer than 90 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn three_node_processes_build_one_list_on_the_heap_of_a_distributed_region() {
    let out = run(&["dsm", "demo", "--posts", "300"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for i in 0..3 {
        let summary = text.lines().find(|l| l.starts_with(&format!("node {i}: summary:"))).expect(&text);
        assert!(summary.contains("by_author=300,300,300 corrupt=0 freed=300"), "{summary}");
    }
    let heap = text.lines().find(|l| l.starts_with("node 0: summary:")).unwrap();
    let (before, after) = heap.split("allocated=").nth(1).unwrap().split_once("->").unwrap();
    assert_eq!(before, after, "{heap}");
}

#[test]
fn the_demo_runs_with_every_fault_capture() {
    for faults in ["userfaultfd", "userfaultfd-sigbus", "signals"] {
        let out = run(&["dsm", "demo", "--posts", "100", "--faults", faults]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{faults}: {text}{}", String::from_utf8_lossy(&out.stderr));
        let want = format!("by_author=100,100,100 corrupt=0 freed=100 faults={faults}");
        assert_eq!(text.matches(&want).count(), 3, "{text}");
    }
}

#[test]
fn the_demo_runs_over_unix_sockets() {
    let out = run(&["dsm", "demo", "--posts", "200", "--unix"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("over Unix sockets (unix:"), "{text}");
    assert_eq!(text.matches("by_author=200,200,200 corrupt=0 freed=200").count(), 3, "{text}");
    // Each node reached the others through the sockets: its pages came in over them.
    for i in 0..3 {
        let traffic = text
            .lines()
            .find(|l| l.starts_with(&format!("node {i}: ")) && l.contains("messages out"))
            .expect(&text);
        assert!(!traffic.contains(" 0 messages out"), "{traffic}");
    }
}

#[test]
fn a_node_with_a_bad_id_or_base_is_refused_with_a_message() {
    let peers = "127.0.0.1:1,127.0.0.1:2";
    let out = run(&["dsm", "node", "--id", "5", "--peers", peers]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--id 5: there are 2 peers"));
    let out = run(&["dsm", "node", "--id", "0", "--peers", peers, "--base", "0x1234"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad region geometry"), "{out:?}");
    let out = run(&["dsm", "node", "--id", "0", "--peers", peers, "--base", "zz"]);
    assert_eq!(out.status.code(), Some(2), "a malformed address is a usage error");
    for bad in ["unix:", "nowhere:7000", &format!("unix:/{}", "x".repeat(120))] {
        let out = run(&["dsm", "node", "--id", "0", "--peers", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: a malformed peer is a usage error");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("neither HOST_IP:PORT nor unix:PATH"),
            "{out:?}"
        );
    }
    let out = run(&["dsm", "node", "--id", "0", "--peers", "unix:/tmp/shmpool-never-0.sock,127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mix TCP addresses and Unix socket paths"),
        "{out:?}"
    );
}

/// Two network namespaces joined by a veth pair, made (and removed) by the test: two
/// hosts, as far as the network goes.
struct Hosts {
    names: [String; 2],
}

impl Hosts {
    fn new() -> Hosts {
        let tag = std::process::id() % 100_000;
        let names = [format!("shmpool-a{tag}"), format!("shmpool-b{tag}")];
        let (va, vb) = (format!("shva{tag}"), format!("shvb{tag}"));
        let hosts = Hosts { names: names.clone() };
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip (iproute2)");
            assert!(st.success(), "ip {args:?}: {st} (network namespaces need root, or CAP_NET_ADMIN)");
        };
        for n in &names {
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        for (i, (n, v)) in names.iter().zip([&va, &vb]).enumerate() {
            ip(&["link", "set", v, "netns", n]);
            ip(&["-n", n, "addr", "add", &format!("10.78.0.{}/24", i + 1), "dev", v]);
            ip(&["-n", n, "link", "set", v, "up"]);
        }
        hosts
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[test]
fn two_nodes_on_two_network_hosts_share_the_region() {
    let hosts = Hosts::new();
    let peers = "10.78.0.1:47301,10.78.0.2:47302";
    let spawn = |i: usize| {
        Command::new("ip")
            .args(["netns", "exec", &hosts.names[i], env!("CARGO_BIN_EXE_shmpool"), "dsm", "node"])
            .args(["--id", &i.to_string(), "--peers", peers, "--posts", "150"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("a node")
    };
    let mut nodes = [spawn(0), spawn(1)];
    let deadline = Instant::now() + Duration::from_secs(90);
    while nodes.iter_mut().any(|n| n.try_wait().unwrap().is_none()) {
        if Instant::now() > deadline {
            for n in &mut nodes {
                let _ = n.kill();
            }
            panic!("watchdog: the nodes ran longer than 90 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, n) in nodes.into_iter().enumerate() {
        let out = n.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "node {i}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("by_author=150,150 corrupt=0 freed=150"), "node {i}: {text}");
        if i == 0 {
            let (before, after) = text.split("allocated=").nth(1).unwrap().split_once("->").unwrap();
            assert_eq!(before, after.split_whitespace().next().unwrap(), "{text}");
        }
    }
}
