//! `tug`: the one binary. `tug server` runs the server; every other
//! subcommand is a client of its HTTP API through `tug-client`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

mod cli;
mod commands;
mod output;

use cli::{Cli, Command};
use tug_core::states::Decision;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        // The reader of our output went away (`tug token list | head -3`):
        // nothing is wrong, and nothing is left to say.
        Err(e) if e.downcast_ref::<output::ClosedPipe>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Server(args) = cli.command {
        return commands::server::run(args).await.map(|()| ExitCode::SUCCESS);
    }
    if let Command::Completions { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "tug", &mut script);
        output::write(String::from_utf8_lossy(&script).trim_end())?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Agent(args) = cli.command {
        return commands::agent::run(&cli.global, args)
            .await
            .map(|()| ExitCode::SUCCESS);
    }
    let client = client(&cli.global)?;
    let out = cli.global.output;
    match cli.command {
        Command::Server(_) | Command::Agent(_) | Command::Completions { .. } => unreachable!("handled above"),
        Command::Token(c) => commands::admin::token(&client, out, c).await,
        Command::Service(c) => commands::admin::service(&client, out, c).await,
        Command::Webhook(c) => commands::webhooks::run(&client, out, c).await,
        Command::Build(c) => commands::build::run(&client, out, c).await,
        Command::Push(a) => commands::transfer::push(&client, out, a).await,
        Command::Pull(a) => commands::transfer::pull(&client, out, a).await,
        Command::Pipeline(c) => commands::deploy::pipeline(&client, out, c).await,
        Command::Release(a) => commands::deploy::release(&client, out, a).await,
        Command::Promote(a) => commands::deploy::promote(&client, out, a).await,
        Command::Rollback(a) => commands::deploy::rollback(&client, out, a).await,
        Command::Approve(a) => commands::deploy::decide(&client, out, a, Decision::Approve).await,
        Command::Reject(a) => commands::deploy::decide(&client, out, a, Decision::Reject).await,
        Command::Status { service } => commands::deploy::status(&client, out, &service).await,
        Command::History { service, env, limit } => {
            commands::deploy::history(&client, out, &service, &env, limit).await
        }
        Command::Policy(c) => commands::deploy::policy(&client, out, c).await,
        Command::Rollout(c) => commands::deploy::rollout(&client, out, c).await,
        Command::Diff { service, from, to } => commands::deploy::diff(&client, out, &service, &from, &to).await,
        Command::Watch { service, since, count } => commands::deploy::watch(&client, out, service, since, count).await,
        Command::Agents { service, env } => commands::deploy::agents(&client, out, service, env).await,
        Command::Version(c) => commands::deploy::version(&client, out, c).await,
        Command::Fsck { repair } => commands::admin::fsck(&client, out, repair).await,
        Command::Gc(a) => commands::admin::gc(&client, out, a).await,
        Command::Audit(c) => commands::admin::audit(&client, out, c).await,
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (else `default_filter`), in
/// colour only when stderr is a terminal: a log file or journal gets plain
/// text, not escape codes.
pub(crate) fn init_logs(default_filter: &str) {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The client for `--server`, with `--token`, `TUG_TOKEN`, or the local
/// admin token a first `tug server` run wrote into ./tug-data.
fn client(global: &cli::Global) -> anyhow::Result<tug_client::Client> {
    let token = match &global.token {
        Some(t) => Some(t.trim().to_string()),
        None => {
            let dir = std::env::var_os("TUG_DATA_DIR").unwrap_or_else(|| "tug-data".into());
            let path = std::path::Path::new(&dir).join("admin.token");
            match std::fs::read_to_string(&path) {
                Ok(t) => Some(t.trim().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            }
        }
    };
    Ok(tug_client::Client::new(&global.server, token)?)
}
