//! The `baton` command: `baton run` (the operator) and `baton crds` (the CRDs as YAML).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use baton::operator::{self, Settings};
use baton::telemetry::{self, LogFormat};

/// `baton --version`: a build with the test hooks says so, so an image can be checked for them.
#[cfg(feature = "test-hooks")]
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (test hooks: failpoints, clock offset)"
);
#[cfg(not(feature = "test-hooks"))]
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Parser)]
#[command(
    name = "baton",
    version = VERSION,
    about = "Upgrades databases on Kubernetes the way managed services do"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator (in-cluster config, or KUBECONFIG).
    Run(RunArgs),
    /// Print every Baton CRD as YAML, or write one file per CRD into --dir.
    Crds {
        /// Write `<plural>.baton.dev.yaml` files into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "BATON_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, env = "BATON_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "BATON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Act without taking the leader lease (only for a single replica).
    #[arg(long, env = "BATON_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// Namespace of the leader lease (default: the namespace of the client's config).
    #[arg(long, env = "BATON_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader lease.
    #[arg(long, env = "BATON_LEASE_NAME", default_value = "baton-leader")]
    lease_name: String,
    /// Seconds a leader's lease lasts without renewal.
    #[arg(long, env = "BATON_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Watch DatabaseInstances, Clusters and UpgradeRequests in this namespace only.
    #[arg(long, env = "BATON_NAMESPACE")]
    namespace: Option<String>,
    /// Seconds between two looks at a settled instance's members (a role or fence changed
    /// behind Baton's back is seen within this, jittered by up to a fifth).
    #[arg(long, env = "BATON_HEALTH_INTERVAL_SECONDS", default_value_t = 30)]
    health_interval_seconds: u64,
    /// How many objects of one kind are reconciled at once. Bounds the operator's memory and its
    /// load on the API server when a fleet wakes together; a pass waits on its members' servers
    /// (a sick one up to its probe timeout), so too few delays healthy instances behind sick ones.
    #[arg(long, env = "BATON_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// This replica's identity (default: the pod name from POD_NAME, else host and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { dir } => match write_crds(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baton crds: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => run(args),
    }
}

fn write_crds(dir: Option<PathBuf>) -> anyhow::Result<()> {
    match dir {
        None => print!("{}", baton::crd::all_yaml()?),
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for crd in baton::crd::all() {
                std::fs::write(
                    dir.join(baton::crd::file_name(&crd)),
                    baton::crd::to_yaml(&crd)?,
                )?;
            }
        }
    }
    Ok(())
}

fn run(args: RunArgs) -> ExitCode {
    telemetry::init(&args.log_level, args.log_format);
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let settings = Settings {
        listen: args.listen,
        leader_election: !args.no_leader_election,
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity,
        lease_duration_seconds: args.lease_duration_seconds.max(3),
        namespace: args.namespace,
        health_interval: std::time::Duration::from_secs(args.health_interval_seconds.max(1)),
        concurrency: args.concurrency.max(1),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(operator::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "baton stopped");
            eprintln!("baton: {e:#}");
            ExitCode::from(2)
        }
    }
}
