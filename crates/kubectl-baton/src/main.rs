//! `kubectl baton`: what people do by hand with Baton's databases, as a kubectl plugin (any
//! `kubectl-baton` on PATH is run by `kubectl baton`).
//!
//! - `status [NAME]`: an instance's or a Cluster's members with role, server-reported version
//!   and lag, and the running upgrade's step and request;
//! - `versions DATASTORE [--from V]`: the catalog, and the targets reachable from V;
//! - `upgrade NAME --to V [--type] [--hold] [--allow-offline] [--dry-run] [--wait]`: an UpgradeRequest (with
//!   `--dry-run`, nothing is created: the plan and the pre-check verdicts are printed);
//! - `commit | rollback | cancel REQUEST`: moves a request's action;
//! - `switchover NAME [--to MEMBER]`: a planned switchover (an UpgradeRequest of type
//!   Switchover: the same fenced protocol as an upgrade's);
//! - `completion SHELL`: shell completion.
//!
//! Exit codes a script can rely on: 0 done (or, for a dry run, every check passed); 1 refused or
//! failed (a check failed, the API server refused the change, or a waited-for request did not
//! end as asked); 2 usage; 3 not found; 4 the API server could not be reached or answered with
//! an error.

mod output;
mod request;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use baton::crd::{Datastore, UpgradeType};

#[derive(Parser)]
#[command(
    name = "kubectl-baton",
    bin_name = "kubectl baton",
    version,
    about = "Status, upgrade targets, dry runs, upgrades and switchovers of Baton's databases",
    after_help = "Exit codes: 0 done, 1 refused or failed, 2 usage, 3 not found, 4 API error."
)]
struct Cli {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true, env = "KUBECONFIG", hide_env_values = true)]
    kubeconfig: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum Command {
    /// An instance or a Cluster: members, roles, versions as the servers report them, lag, and
    /// the upgrade in flight. Without NAME, every instance and Cluster of the namespace.
    Status {
        /// A DatabaseInstance or Cluster name.
        name: Option<String>,
    },
    /// The catalog of DATASTORE, and with --from the versions an upgrade from V may target.
    Versions {
        #[arg(value_enum)]
        datastore: DatastoreArg,
        /// The running version: list what it may be upgraded to, and why the others may not.
        #[arg(long)]
        from: Option<String>,
    },
    /// Upgrade an instance or a Cluster: creates an UpgradeRequest.
    Upgrade {
        /// A DatabaseInstance or Cluster name.
        name: String,
        /// The target version (default: the catalog's default version).
        #[arg(long)]
        to: Option<String>,
        /// How the members are upgraded.
        #[arg(long = "type", value_enum, default_value_t = TypeArg::Rolling)]
        type_: TypeArg,
        /// Stop in AwaitingCommit with the standbys upgraded (then `commit` or `rollback`).
        #[arg(long)]
        hold: bool,
        /// Accept an offline hop (a PostgreSQL major: pg_upgrade, a write outage).
        #[arg(long)]
        allow_offline: bool,
        #[command(flatten)]
        common: RequestArgs,
    },
    /// Commit a request held in AwaitingCommit: switch over and finish.
    Commit(ActionArgs),
    /// Return a held request's standbys to the source version.
    Rollback(ActionArgs),
    /// Stop a request after its current step, leaving every target healthy.
    Cancel(ActionArgs),
    /// A planned switchover of an instance's primary role, through the same fenced protocol as
    /// an upgrade's (an UpgradeRequest of type Switchover).
    Switchover {
        /// The DatabaseInstance.
        name: String,
        /// The member to make primary (default: the most advanced caught-up standby).
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        common: RequestArgs,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What every request-creating command takes.
#[derive(clap::Args)]
pub struct RequestArgs {
    /// Change nothing: print the plan and the pre-check verdicts (exit 1 if a check fails).
    #[arg(long)]
    dry_run: bool,
    /// Wait until the request ends (or holds), printing its progress.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// The UpgradeRequest's name (default: derived from the target).
    #[arg(long)]
    request_name: Option<String>,
}

#[derive(clap::Args)]
pub struct ActionArgs {
    /// The UpgradeRequest.
    request: String,
    /// Wait until the request ends as the action asks, printing its progress.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DatastoreArg {
    Redis,
    Postgresql,
    Mysql,
    Mariadb,
}

impl From<DatastoreArg> for Datastore {
    fn from(d: DatastoreArg) -> Datastore {
        match d {
            DatastoreArg::Redis => Datastore::Redis,
            DatastoreArg::Postgresql => Datastore::Postgresql,
            DatastoreArg::Mysql => Datastore::Mysql,
            DatastoreArg::Mariadb => Datastore::Mariadb,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TypeArg {
    Rolling,
    InPlace,
    Hotfix,
}

impl From<TypeArg> for UpgradeType {
    fn from(t: TypeArg) -> UpgradeType {
        match t {
            TypeArg::Rolling => UpgradeType::Rolling,
            TypeArg::InPlace => UpgradeType::InPlace,
            TypeArg::Hotfix => UpgradeType::Hotfix,
        }
    }
}

/// Why a command did not do what it was asked, and its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Refused or failed (exit 1).
    Refused(String),
    /// Not found (exit 3).
    NotFound(String),
    /// The API server could not be reached or answered with an error (exit 4).
    Api(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Refused(_) => 1,
            Failure::NotFound(_) => 3,
            Failure::Api(_) => 4,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Refused(m) | Failure::NotFound(m) | Failure::Api(m) => m,
        }
    }
}

impl From<kube::Error> for Failure {
    fn from(e: kube::Error) -> Failure {
        match &e {
            // The API server's refusal (admission, CEL, a conflict) is the user's to fix.
            kube::Error::Api(s) if s.code == 404 => Failure::NotFound(s.message.clone()),
            kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 401 => {
                Failure::Refused(s.message.clone())
            }
            _ => Failure::Api(e.to_string()),
        }
    }
}

pub type Outcome = Result<(), Failure>;

/// The client and namespace every command works with.
pub struct Session {
    pub client: Client,
    pub namespace: String,
    pub format: Format,
}

async fn connect(cli: &Cli) -> Result<Session, Failure> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| Failure::Api(format!("reading {}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| Failure::Api(e.to_string()))?
        }
        None if cli.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Failure::Api(e.to_string()))?,
        None => Config::infer()
            .await
            .map_err(|e| Failure::Api(e.to_string()))?,
    };
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let mut config = config;
    let agent = concat!("kubectl-baton/", env!("CARGO_PKG_VERSION"));
    baton::operator::name_client(&mut config, agent).map_err(|e| Failure::Api(e.to_string()))?;
    let client = Client::try_from(config).map_err(|e| Failure::Api(e.to_string()))?;
    Ok(Session {
        client,
        namespace,
        format: cli.output,
    })
}

async fn run(cli: Cli) -> Outcome {
    if let Command::Completion { shell } = &cli.command {
        clap_complete::generate(
            *shell,
            &mut Cli::command(),
            "kubectl-baton",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    let s = connect(&cli).await?;
    match cli.command {
        Command::Status { name } => output::status(&s, name.as_deref()).await,
        Command::Versions { datastore, from } => {
            output::versions(&s, datastore.into(), from.as_deref()).await
        }
        Command::Upgrade {
            name,
            to,
            type_,
            hold,
            allow_offline,
            common,
        } => {
            request::upgrade(
                &s,
                request::Ask {
                    target: &name,
                    version: to.as_deref(),
                    type_: type_.into(),
                    hold,
                    allow_offline,
                    switchover_to: None,
                },
                &common,
            )
            .await
        }
        Command::Switchover { name, to, common } => {
            request::upgrade(
                &s,
                request::Ask {
                    target: &name,
                    version: None,
                    type_: UpgradeType::Switchover,
                    hold: false,
                    allow_offline: false,
                    switchover_to: to.as_deref(),
                },
                &common,
            )
            .await
        }
        Command::Commit(a) => request::act(&s, &a, baton::crd::UpgradeAction::Commit).await,
        Command::Rollback(a) => request::act(&s, &a, baton::crd::UpgradeAction::Rollback).await,
        Command::Cancel(a) => request::act(&s, &a, baton::crd::UpgradeAction::Cancel).await,
        Command::Completion { .. } => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(4);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message());
            ExitCode::from(f.code())
        }
    }
}
