//! `shmpool dsm node` and `shmpool dsm demo`: nodes (processes) over TCP (or Unix
//! sockets, on one host) mapping one
//! distributed region (`shmpool_dsm::region`) at the same address, with the shmpool heap
//! on it, building one shared list together (`shmpool_dsm::board`).
//!
//! Each node prints what it saw as one `summary:` line (by author, corrupt, freed, and
//! on node 0 the heap's allocated bytes before and after), then its traffic, then
//! leaves once every node is done.

use shmpool_dsm::region::{FaultCapture, Region, RegionOptions};
use shmpool_dsm::transport::Peer;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A directory of this run's own for Unix sockets: a new one (never one that was there
/// already), private (mode 0700), removed with what is in it when dropped.
pub struct SocketDir(tempfile::TempDir);

impl SocketDir {
    pub fn new(what: &str) -> Result<SocketDir, String> {
        use std::os::unix::fs::PermissionsExt;
        tempfile::Builder::new()
            .prefix(&format!("shmpool-{what}-"))
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map(SocketDir)
            .map_err(|e| format!("a new directory for sockets in {}: {e}", std::env::temp_dir().display()))
    }

    /// The path of `name` in the directory.
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.path().join(name)
    }
}

/// What `dsm node` is told.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// This node's index in PEERS.
    #[arg(long)]
    pub id: u16,
    /// Every node's address, in order, comma separated: HOST_IP:PORT, or unix:PATH
    /// (a Unix socket, whose path has no comma) when every node is on this host.
    #[arg(long, value_delimiter = ',', required = true)]
    pub peers: Vec<Peer>,
    /// Where this node listens over TCP (default: its own entry of PEERS), e.g.
    /// 0.0.0.0:7000.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The region's size (K, M, G suffixes); the same on every node.
    #[arg(long, default_value = "64M", value_parser = crate::units::parse_size)]
    pub size: u64,
    /// The address every node maps the region at (hex with 0x, or decimal); the
    /// same on every node. Default: 0x200000000000.
    #[arg(long, value_parser = crate::parse_address)]
    pub base: Option<u64>,
    /// Notes each node allocates and puts on the list.
    #[arg(long, default_value_t = 200)]
    pub posts: u64,
    /// How faults are caught: auto (userfaultfd where it can be had), userfaultfd
    /// (a handler thread), userfaultfd-sigbus (the faulting thread, on SIGBUS), or
    /// signals (mprotect and SIGSEGV; regions of at most 64 MiB).
    #[arg(long, default_value = "auto", value_parser = crate::parse_faults)]
    pub faults: FaultCapture,
    /// Pages a read fault asks for ahead once reads go through the region in order
    /// (0: none; at most 1024).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub read_ahead: u32,
    /// Microseconds each link's reader polls for the next message before it sleeps
    /// (0: none). Spares a wake-up per message, for up to this much CPU after each:
    /// for nodes with a CPU to spare.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub link_poll_us: u64,
}

/// The word `--faults` takes for `f`.
pub fn faults_arg(f: FaultCapture) -> &'static str {
    match f {
        FaultCapture::Auto => "auto",
        FaultCapture::Userfaultfd => "userfaultfd",
        FaultCapture::Signals => "signals",
        FaultCapture::UserfaultfdSigbus => "userfaultfd-sigbus",
    }
}

pub fn node(a: &NodeArgs) -> Result<(), String> {
    let n = a.peers.len();
    if usize::from(a.id) >= n {
        return Err(format!("--id {}: there are {n} peers", a.id));
    }
    let mut opts = RegionOptions::new(usize::try_from(a.size).map_err(|_| "--size is too large")?);
    if let Some(base) = a.base {
        opts.base = usize::try_from(base).map_err(|_| "--base is too large")?;
    }
    opts.faults = a.faults;
    opts.listen = a.listen;
    opts.read_ahead = a.read_ahead;
    opts.link_poll = Duration::from_micros(a.link_poll_us);
    let region = Region::join(a.id, &a.peers, &opts).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let r = shmpool_dsm::board::build(&region, a.posts).map_err(|e| e.to_string())?;
    let took = started.elapsed();
    let authors = r.by_author.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let mut out =
        format!("node {}: summary: by_author={authors} corrupt={} freed={}", a.id, r.corrupt, r.freed);
    out.push_str(&format!(" faults={}", faults_arg(region.fault_capture())));
    out.push_str(&format!(" shared_pages={}", r.shared_pages));
    if let Some((before, after)) = r.allocated {
        out.push_str(&format!(" allocated={before}->{after}"));
    }
    let st = region.stats();
    out.push_str(&format!(
        "\nnode {}: {} notes on the list, {} of node {}'s freed by this node; {:.1} ms; {} page requests ({} read ahead, {} reads granted writable), {} pages moved out, {} messages out, {} in ({} found polling), {} KiB of pages in",
        a.id,
        r.by_author.iter().sum::<u64>(),
        r.freed,
        (usize::from(a.id) + 1) % n,
        took.as_secs_f64() * 1e3,
        st.requests,
        st.read_ahead,
        st.migratory,
        st.moved,
        st.sent,
        st.received,
        st.polled,
        st.page_bytes_in >> 10,
    ));
    crate::print_out(&format!("{out}\n"))?;
    if !region.leave(Duration::from_secs(60)) {
        return Err("the other nodes were not done within 60 s".into());
    }
    Ok(())
}

/// The fields of a `summary:` line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

pub fn demo(posts: u64, faults: FaultCapture, unix: bool) -> Result<(), String> {
    // Three Unix sockets in a directory of this run's, or three free loopback ports
    // (bound and released; a race with another program is possible but unlikely).
    let dir = if unix { Some(SocketDir::new("dsm-demo")?) } else { None };
    let peers: Vec<Peer> = if let Some(dir) = &dir {
        (0..3).map(|i| Peer::Unix(dir.join(&format!("node-{i}.sock")))).collect()
    } else {
        (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(Peer::Tcp))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?
    };
    let list = peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let links = if unix { "Unix sockets" } else { "loopback TCP" };
    println!(
        "shmpool dsm demo: 3 node processes over {links} ({list}) map one 64 MiB region at the same \
         address, put the shmpool heap on it, and build one list: {posts} notes from each node"
    );
    let nodes: Vec<std::process::Child> = (0..3)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "dsm",
                    "node",
                    "--id",
                    &i.to_string(),
                    "--peers",
                    &list,
                    "--posts",
                    &posts.to_string(),
                    "--faults",
                    faults_arg(faults),
                ])
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let pids: Vec<u32> = nodes.iter().map(|c| c.id()).collect();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        for pid in pids {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    });
    drop(watchdog);
    let mut ok = true;
    for (i, n) in nodes.into_iter().enumerate() {
        let out = n.wait_with_output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        let summary = text.lines().find(|l| l.contains("summary:")).unwrap_or("");
        let want = format!("{posts},{posts},{posts}");
        let heap_ok = i != 0
            || field(summary, "allocated").is_some_and(|a| a.split_once("->").is_some_and(|(b, e)| b == e));
        if !out.status.success()
            || field(summary, "by_author") != Some(&want)
            || field(summary, "corrupt") != Some("0")
            || field(summary, "shared_pages") != Some("0")
            || !heap_ok
        {
            eprintln!(
                "node {i}: {} ({})",
                if summary.is_empty() { "no summary" } else { summary },
                out.status
            );
            ok = false;
        }
    }
    if !ok {
        return Err("a node did not see the whole list, or the heap did not come back to its start".into());
    }
    println!("  ok: every node saw every note, intact; every note was freed by the next node; the heap is back where it started");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::SocketDir;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn socket_dirs_are_new_private_and_removed_on_drop() {
        let (a, b) = (SocketDir::new("test").unwrap(), SocketDir::new("test").unwrap());
        let dir = a.join("x").parent().unwrap().to_path_buf();
        assert_ne!(dir, b.join("x").parent().unwrap(), "each run gets a directory of its own");
        let meta = std::fs::metadata(&dir).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700, "only this user may reach the sockets");
        std::fs::write(a.join("node-0.sock"), b"").unwrap();
        drop(a);
        assert!(!dir.exists(), "removed with what is in it");
    }
}
