//! The `patron` command line: parses arguments and wires the crates together. No domain logic
//! lives here.

mod commands;
mod settings;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Decoded events are allocated on the decode threads and freed on the writer thread; mimalloc
/// handles that cross-thread churn much better than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Patron: streaming customer-value scoring and personalization.
///
/// Events (purchases, refunds, interactions, identify, alias) become per-customer state in an
/// embedded redb store: RFM scores and segments, lifetime value (BG/NBD + Gamma-Gamma), and
/// engagement. Query it with SQL, export it, or serve it over HTTP.
#[derive(Debug, Parser)]
#[command(
    name = "patron",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// A TOML config file. Keys are in config/default.toml; PATRON__SECTION__KEY environment
    /// variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log filter, e.g. `info` or `patron=debug` (logs go to stderr).
    #[arg(long, global = true, env = "PATRON_LOG", default_value = "warn")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Serve(commands::serve::ServeArgs),
    Replay(commands::replay::ReplayArgs),
    Query(commands::query::QueryArgs),
    Export(commands::export::ExportArgs),
    Generate(commands::generate::GenerateArgs),
    Fit(commands::fit::FitArgs),
    Demo(commands::demo::DemoArgs),
    /// Manage API keys: `patron keys new --role reader|marketing|admin|ingest`.
    Keys(commands::keys::KeysArgs),
}

/// How a command failed, which decides the exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad usage or config: exit 2.
    Usage(String),
    /// Anything else at run time: exit 1.
    Runtime(String),
}

impl Failure {
    pub(crate) fn runtime(e: impl std::fmt::Display) -> Self {
        Failure::Runtime(e.to_string())
    }
}

pub(crate) type CmdResult = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match settings::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve(a) => commands::serve::run(a, config),
        Command::Replay(a) => commands::replay::run(a, config),
        Command::Query(a) => commands::query::run(a, config),
        Command::Export(a) => commands::export::run(a, config),
        Command::Generate(a) => commands::generate::run(a),
        Command::Fit(a) => commands::fit::run(a, config),
        Command::Demo(a) => commands::demo::run(a, config),
        Command::Keys(a) => commands::keys::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
    }
}
