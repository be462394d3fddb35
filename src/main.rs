//! presignd: the server. Thin: parse the command line, set up logging, run.

use anyhow::Context;
use clap::{Arg, ArgAction, Args, Command};
use presignd::{
    app::App, auth, config::Config, lifecycle, registry, reseal, seal, secret, telemetry,
};
use std::io::Read;

/// Per-thread heaps: glibc malloc cost the server ~18% of its CPU per link,
/// part of it in arena locks between the runtime's threads; with mimalloc
/// the server spends ~12% less CPU a link (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn cli() -> Command {
    Command::new("presignd")
        .about("Issues S3 presigned URLs, records every one, revokes them in bulk")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .subcommand(Config::augment_args(
            Command::new("serve").about("Serve the gRPC API"),
        ))
        .subcommand(Config::augment_args(
            Command::new("migrate").about("Apply pending registry migrations and exit"),
        ))
        .subcommand(
            Config::augment_args(Command::new("reseal").about(
                "Re-encrypt every sealed secret under a new master key, in one transaction (stop every replica first)",
            ))
            .arg(
                Arg::new("new-master-key-file")
                    .long("new-master-key-file")
                    .required(true)
                    .help("File holding the new master key (64 hex characters or base64 of 32 bytes)"),
            ),
        )
        .subcommand(
            Command::new("hash-token")
                .about("Print the SHA-256 of a caller token read from stdin, for PRESIGND_CALLERS")
                .arg(
                    Arg::new("token")
                        .help("The token (default: read stdin)")
                        .action(ArgAction::Set),
                ),
        )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let matches = cli().get_matches();
    // Commands with settings log as configured; the others as the environment says.
    let config = match matches.subcommand() {
        Some(("serve" | "migrate" | "reseal", m)) => {
            let config = Config::from_matches(m)?;
            telemetry::init(config.log_format, config.log_level.as_deref())?;
            Some(config)
        }
        _ => {
            telemetry::init_from_env();
            None
        }
    };
    match matches.subcommand() {
        Some(("serve", _)) => {
            let config = config.expect("parsed above");
            App::build(config).await?.run_until_stopped().await
        }
        Some(("migrate", _)) => {
            let config = config.expect("parsed above");
            let options = config.database_options()?;
            let pool = registry::lazy_pool(options, 2, 0, config.db_acquire_timeout());
            registry::migrate(&pool).await?;
            let report = lifecycle::prepare(&pool, chrono::Utc::now()).await?;
            println!(
                "registry migrated; partitions created ahead: {}",
                report.created.len()
            );
            Ok(())
        }
        Some(("reseal", m)) => {
            let config = config.expect("parsed above");
            let old = config.master_key()?;
            let path = m
                .get_one::<String>("new-master-key-file")
                .expect("required by clap");
            let text = secret::SecretString::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading new master key file {path}"))?,
            );
            let new = seal::MasterKey::parse(text.expose()).context("--new-master-key-file")?;
            let options = config.database_options()?;
            let pool = registry::lazy_pool(options, 2, 0, config.db_acquire_timeout());
            let n = reseal::reseal(&pool, &old, &new).await?;
            println!("resealed {n} secret(s); restart every replica with the new master key");
            Ok(())
        }
        Some(("hash-token", m)) => {
            let token = match m.get_one::<String>("token") {
                Some(t) => t.clone(),
                None => {
                    let mut s = String::new();
                    std::io::stdin().read_to_string(&mut s)?;
                    s
                }
            };
            let token = token.trim();
            if token.is_empty() {
                anyhow::bail!(
                    "hash-token: the token is empty; give a token (argument or stdin), e.g. from `openssl rand -hex 32`"
                );
            }
            println!("{}", auth::hash_token(token));
            Ok(())
        }
        _ => unreachable!("clap requires a subcommand"),
    }
}
