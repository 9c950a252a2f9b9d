//! `shmpool`: create, inspect, check, recover, list and remove shared-memory segments, and
//! run the demo and the benchmarks.
//!
//! Errors are one line on stderr and a non-zero exit: 1 when the command failed, 2 when
//! the command line was wrong.

mod bench;
mod child;
mod cmd;
mod demo;
mod dsm;
mod procs;
mod stress;
mod units;

use clap::{Parser, Subcommand};
use cmd::Target;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "shmpool", version, about = "Shared-memory segments for many processes")]
#[command(arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a named segment (in /dev/shm, or a file with --file).
    Create {
        /// Segment name (or file path with --file).
        name: String,
        /// Bytes committed now (K, M, G suffixes).
        #[arg(long, default_value = "1M", value_parser = units::parse_size)]
        size: u64,
        /// Bytes reserved: the most it can grow to.
        #[arg(long, default_value = "1G", value_parser = units::parse_size)]
        max_size: u64,
        /// Permission bits, in octal.
        #[arg(long, default_value = "600", value_parser = parse_mode)]
        mode: u32,
        /// NAME is a file path: create a mapped-file segment.
        #[arg(long)]
        file: bool,
    },
    /// Show a segment's header and who maps it.
    Info {
        /// Segment name (or file path with --file).
        name: String,
        /// NAME is a file path.
        #[arg(long)]
        file: bool,
    },
    /// Walk every invariant of the segment's heap (on a quiet heap): exit 0 clean, 1
    /// broken, 2 if it could not run.
    Check {
        /// Segment name (or file path with --file).
        name: String,
        /// NAME is a file path.
        #[arg(long)]
        file: bool,
    },
    /// Recover what processes that died left in the segment's heap, and report it.
    Recover {
        /// Segment name (or file path with --file).
        name: String,
        /// NAME is a file path.
        #[arg(long)]
        file: bool,
    },
    /// Run mixed alloc / free / hand-over traffic on the segment's heap (making it one if
    /// it holds none) until the time is up; safe to SIGKILL at any instant. With --audit,
    /// check instead that nothing was lost: exit 0 if free and held bytes add up to the
    /// heap's capacity, 1 if not.
    Stress {
        /// Segment name (or file path with --file).
        name: String,
        /// NAME is a file path.
        #[arg(long)]
        file: bool,
        /// How long to run.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Seed of the traffic.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Worker threads, each with its own thread heap.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        threads: u32,
        /// Do not run: recover, then account for every block (after the workers are gone).
        #[arg(long)]
        audit: bool,
        /// With --audit: free every block the workers held, and audit again.
        #[arg(long, requires = "audit")]
        release: bool,
    },
    /// List the shmpool segments in /dev/shm.
    Ls,
    /// Remove a segment's name (processes that map it keep their mapping).
    Rm {
        /// Segment name (or file path with --file).
        name: String,
        /// NAME is a file path.
        #[arg(long)]
        file: bool,
        /// Remove even if it does not look like a shmpool segment.
        #[arg(long)]
        force: bool,
    },
    /// Run four worker processes that share one growing segment, and report.
    Demo {
        /// Records (4 KiB each) per writer.
        #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        records: u64,
    },
    /// Run the benchmark workloads (W1–W5) and print one line each.
    Bench {
        /// Alloc+free pairs per W1/W3 repetition.
        #[arg(long, default_value_t = 5_000_000, value_parser = clap::value_parser!(u64).range(1000..))]
        n: u64,
        /// Blocks handed over per W4 repetition.
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1000..))]
        handoffs: u64,
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(5..=1000))]
        reps: u64,
        /// Only these workloads (w1..w5, recovery, pools, channels, dsm), comma separated.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// The distributed mode: nodes on several hosts sharing one region.
    #[command(subcommand)]
    Dsm(DsmCommand),
    /// Node 1 of the distributed-mode benchmark (started by `shmpool bench`).
    #[command(name = "__dsm-bench-node", hide = true)]
    DsmBenchNode {
        #[arg(long, value_delimiter = ',', required = true)]
        peers: Vec<shmpool_dsm::transport::Peer>,
        #[arg(long)]
        size: u64,
        #[arg(long)]
        echo: shmpool_dsm::transport::Peer,
        #[arg(long, value_parser = parse_faults)]
        faults: shmpool_dsm::region::FaultCapture,
        /// The CPU the node keeps to.
        #[arg(long)]
        cpu: Option<usize>,
        /// Microseconds the node's link readers poll before they sleep.
        #[arg(long, default_value_t = 0)]
        link_poll_us: u64,
    },
    /// A demo worker (started by `shmpool demo`).
    #[command(name = "__demo-worker", hide = true)]
    DemoWorker {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        socket: Option<String>,
        #[arg(long)]
        slot: u64,
        #[arg(long)]
        reader: bool,
    },
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("invalid mode {text:?}: expected octal digits such as 600"))
}

/// A command that failed: its exit code, and the line for stderr (none if its output
/// already said it).
struct Failure {
    code: u8,
    message: Option<String>,
}

impl Failure {
    fn new(code: u8, message: String) -> Self {
        Self { code, message: Some(message) }
    }

    fn quiet(code: u8) -> Self {
        Self { code, message: None }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::new(1, message)
    }
}

fn run(command: Command) -> Result<(), Failure> {
    let out = match command {
        Command::Create { name, size, max_size, mode, file } => {
            cmd::create(&Target::new(&name, file)?, size, max_size, mode)?
        }
        Command::Info { name, file } => cmd::info(&Target::new(&name, file)?)?,
        Command::Check { name, file } => {
            let target = Target::new(&name, file).map_err(|e| Failure::new(2, e))?;
            let (report, clean) = cmd::check(&target).map_err(|e| Failure::new(2, e))?;
            print_out(&format!("{report}\n"))?;
            return if clean { Ok(()) } else { Err(Failure::quiet(1)) };
        }
        Command::Recover { name, file } => cmd::recover(&Target::new(&name, file)?)?,
        Command::Stress { name, file, seconds, seed, threads, audit, release } => {
            let target = Target::new(&name, file)?;
            let open = || target.open(shmpool::segment::Access::ReadWrite);
            if audit {
                let (report, whole) = stress::audit(open()?, release).map_err(|e| Failure::new(2, e))?;
                print_out(&format!("{report}\n"))?;
                return if whole { Ok(()) } else { Err(Failure::quiet(1)) };
            }
            if !(0.0..=1e6).contains(&seconds) {
                return Err(Failure::new(2, format!("--seconds {seconds}: expected 0 to 1000000")));
            }
            stress::run(open, &stress::Plan { seconds, seed, threads })?
        }
        Command::Ls => cmd::ls()?,
        Command::Rm { name, file, force } => cmd::rm(&Target::new(&name, file)?, force)?,
        Command::Demo { records } => return Ok(demo::run(records)?),
        Command::Bench { n, handoffs, reps, only } => {
            return Ok(bench::run(&bench::Plan { n, handoffs, reps: reps as usize, only })?)
        }
        Command::Dsm(DsmCommand::Node(args)) => return Ok(dsm::node(&args)?),
        Command::Dsm(DsmCommand::Demo { posts, faults, unix }) => return Ok(dsm::demo(posts, faults, unix)?),
        Command::DsmBenchNode { peers, size, echo, faults, cpu, link_poll_us } => {
            let link_poll = std::time::Duration::from_micros(link_poll_us);
            return Ok(bench::dsm_bench_node(&peers, size, echo, faults, (cpu, link_poll))?);
        }
        Command::DemoWorker { name, socket, slot, reader } => {
            return Ok(demo::worker_main(name.as_deref(), socket.as_deref(), slot, reader)?)
        }
    };
    Ok(print_out(&format!("{out}\n"))?)
}

/// `shmpool dsm ...`.
#[derive(clap::Subcommand, Debug)]
enum DsmCommand {
    /// Run node ID of the nodes at PEERS (this node listens on PEERS[ID]): map the
    /// distributed region at the same address as every node, put the shmpool heap on it
    /// (node 0) or attach, and build the shared list of notes with the others; print
    /// what this node saw, then leave once every node is done.
    Node(dsm::NodeArgs),
    /// Start three local nodes (processes over loopback TCP) that put the shmpool heap
    /// on one distributed region and build a shared list on it, and check what each saw.
    Demo {
        /// Notes per node.
        #[arg(long, default_value_t = 200)]
        posts: u64,
        /// How the nodes catch faults (auto, userfaultfd, userfaultfd-sigbus, signals).
        #[arg(long, default_value = "auto", value_parser = parse_faults)]
        faults: shmpool_dsm::region::FaultCapture,
        /// Link the nodes by Unix sockets instead of loopback TCP.
        #[arg(long)]
        unix: bool,
    },
}

fn parse_faults(text: &str) -> Result<shmpool_dsm::region::FaultCapture, String> {
    use shmpool_dsm::region::FaultCapture;
    match text {
        "auto" => Ok(FaultCapture::Auto),
        "userfaultfd" => Ok(FaultCapture::Userfaultfd),
        "signals" => Ok(FaultCapture::Signals),
        "userfaultfd-sigbus" => Ok(FaultCapture::UserfaultfdSigbus),
        _ => Err(format!(
            "invalid fault capture {text:?}: expected auto, userfaultfd, userfaultfd-sigbus or signals"
        )),
    }
}

fn parse_address(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("invalid address {text:?}: expected 0x followed by hex digits, or decimal"))
}

/// Writes to stdout; a closed pipe (`shmpool ls | head`) ends quietly, other write errors
/// are reported.
pub fn print_out(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("writing the output: {e}")),
    }
}

/// The first paragraph of a clap error on one line: the message and, where clap lists
/// them on the lines below, the missing arguments.
fn one_line(err: &clap::Error) -> String {
    let text = err.to_string();
    let para: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    para.join(" ").trim_start_matches("error: ").to_string()
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print(); // no command at all: show what there is
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("shmpool: {}", one_line(&e));
            return ExitCode::from(2);
        }
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            if let Some(e) = message {
                eprintln!("shmpool: {e}");
            }
            ExitCode::from(code)
        }
    }
}
