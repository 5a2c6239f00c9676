//! Opens the configured database and blob store and builds the service on
//! them: the one module of the server that knows `tug-db` and `tug-store`.
//! Everything else reaches them only through the service (the test
//! `only_the_backends_module_imports_the_database_and_the_store` keeps it so).

use std::collections::HashMap;

use anyhow::Context;
use tug_service::{Settings, Tugboat};

use crate::config::{self, Config};

/// Opens the database (running its migrations) and the store (removing
/// what interrupted uploads left), and returns the service over them.
pub(crate) async fn open(
    config: &Config,
    env: &HashMap<String, String>,
    settings: Settings,
) -> anyhow::Result<Tugboat> {
    let db_url = config.database_url();
    let db = tug_db::Db::connect(&db_url)
        .await
        .with_context(|| format!("cannot open database {}", config::redact(&db_url)))?;
    let store_address = config.blob_store_address();
    let store = tug_store::open(&store_address, s3_credentials_from(env))
        .with_context(|| format!("cannot open blob store {store_address}"))?;
    let cleaned = store
        .clean_temporary()
        .await
        .context("cannot clean the blob store's temporary files")?;
    if cleaned > 0 {
        tracing::info!(cleaned, "removed leftovers of interrupted uploads");
    }
    Ok(Tugboat::new(db, store, settings))
}

/// S3 credentials from the usual `AWS_*` variables, if set.
pub fn s3_credentials_from(env: &HashMap<String, String>) -> Option<tug_store::s3::Credentials> {
    Some(tug_store::s3::Credentials {
        access_key_id: env.get("AWS_ACCESS_KEY_ID")?.clone(),
        secret_access_key: env.get("AWS_SECRET_ACCESS_KEY")?.clone(),
        session_token: env.get("AWS_SESSION_TOKEN").cloned(),
    })
}

#[cfg(test)]
mod tests {
    /// The server touches the database and the store only through the
    /// service: no module but this one names `tug_db` or `tug_store`.
    #[test]
    fn only_the_backends_module_imports_the_database_and_the_store() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path == src.join("backends.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for (n, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or_default();
                    if ["tug_db", "tug_store", "tug-db", "tug-store"]
                        .iter()
                        .any(|c| code.contains(c))
                    {
                        offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "only backends.rs may use tug-db or tug-store:\n{}",
            offenders.join("\n")
        );
    }
}
