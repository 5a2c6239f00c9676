//! `tug server`: layers the configuration (defaults < tug.toml < TUG_*
//! environment < flags), starts the server and serves until SIGTERM/SIGINT.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use tug_server::{Config, Layer};

use crate::cli::ServerArgs;

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    crate::init_logs("info,sqlx=warn");
    let env: HashMap<String, String> = std::env::vars().collect();
    let mut config = Config::default();
    let file = args.config.clone().or_else(|| {
        let default = PathBuf::from("tug.toml");
        default.exists().then_some(default)
    });
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        config = config.apply(Layer::from_toml(&path.display().to_string(), &text)?);
    }
    config = config.apply(Layer::from_env(&env)?);
    config = config.apply(Layer {
        listen: args.listen,
        data_dir: args.data_dir,
        database: args.database,
        blob_store: args.blob_store,
        max_blob_size: args.max_blob_size,
        server_rules: if args.server_rules.is_empty() {
            None
        } else {
            Some(
                args.server_rules
                    .iter()
                    .map(|r| tug_core::ServerRule::parse(r))
                    .collect::<Result<_, _>>()?,
            )
        },
        ..Default::default()
    });
    tracing::debug!(?config, "configuration");

    let started = tug_server::start(&config, &env).await?;
    let token = match &started.admin_token_path {
        Some(path) => format!(
            "admin token written to {} (mode 0600); tug reads it from there",
            path.display()
        ),
        None => format!(
            "admin token: in {} (created on first start)",
            config.admin_token_path().display()
        ),
    };
    let banner = format!(
        "Tugboat listening on http://{}\n  database:   {}\n  blob store: {}\n  {token}",
        started.addr,
        tug_server::config::redact(&config.database_url()),
        started.tugboat().store_description()
    );
    // A server keeps serving when nobody reads its stdout any more.
    if let Err(e) = crate::output::write(banner) {
        tracing::warn!(error = %e, "cannot print the start banner");
    }
    started.serve(tug_server::shutdown_signal()).await
}
