//! presignctl: the command line for operators and scripts. Talks to a running
//! presignd over gRPC with a bearer token (PRESIGND_TOKEN).

mod links;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use presignd::proto::{self, link_service_client::LinkServiceClient};
use std::time::{Duration, Instant};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[derive(Parser)]
#[command(
    name = "presignctl",
    version,
    about = "Operate presignd: issue links, inspect and revoke keys"
)]
struct Cli {
    /// presignd's gRPC endpoint.
    #[arg(
        long,
        env = "PRESIGND_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    endpoint: String,
    /// Bearer token identifying you to presignd.
    #[arg(long, env = "PRESIGND_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Issue a presigned link and print its URL.
    Issue {
        #[arg(long)]
        bucket: String,
        #[arg(long)]
        key: String,
        /// GET, PUT, HEAD or DELETE.
        #[arg(long, default_value = "GET")]
        method: String,
        /// Seconds the link stays valid.
        #[arg(long, default_value_t = 900)]
        ttl: i64,
        /// PUT only: the Content-Type the upload must carry.
        #[arg(long)]
        content_type: Option<String>,
        /// Labels as KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// List links, newest first, narrowed by the filters.
    Links(links::ListArgs),
    /// Count links per state, grouped by key, signer, bucket or caller.
    Summarize(links::SummarizeArgs),
    /// Which link is this URL? Prints it and the blast radius of its key.
    Lookup(links::LookupArgs),
    /// Wait until presignd reports SERVING (exit 1 on timeout).
    WaitReady {
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("label {s:?} must be KEY=VALUE"))
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("presignctl: {e:#}");
        std::process::exit(1);
    }
}

async fn channel(endpoint: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(endpoint.to_owned())
        .context("invalid --endpoint")?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to presignd at {endpoint}"))
}

fn bearer(token: &Option<String>) -> anyhow::Result<MetadataValue<tonic::metadata::Ascii>> {
    let token = token
        .as_deref()
        .context("no token: set PRESIGND_TOKEN or --token")?;
    format!("Bearer {token}")
        .parse()
        .context("the token is not valid ASCII")
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Issue {
            bucket,
            key,
            method,
            ttl,
            content_type,
            labels,
        } => {
            let auth = bearer(&cli.token)?;
            let mut client = LinkServiceClient::with_interceptor(
                channel(&cli.endpoint).await?,
                move |mut r: tonic::Request<()>| {
                    r.metadata_mut().insert("authorization", auth.clone());
                    Ok(r)
                },
            );
            let method = presignd::domain::Method::parse(&method)?.to_proto();
            let resp = client
                .issue_link(proto::IssueLinkRequest {
                    bucket,
                    object_key: key,
                    method: method as i32,
                    ttl: Some(prost_types::Duration {
                        seconds: ttl,
                        nanos: 0,
                    }),
                    labels: labels.into_iter().collect(),
                    content_type: content_type.unwrap_or_default(),
                    response_content_disposition: String::new(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if cli.json {
                let link = resp.link.unwrap_or_default();
                let out = serde_json::json!({
                    "url": resp.url,
                    "link_id": link.id,
                    "key_id": link.key_id,
                    "expires_at": link.expires_at.map(|t| t.seconds),
                    "headers": resp.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect::<std::collections::BTreeMap<_, _>>(),
                });
                println!("{out}");
            } else {
                println!("{}", resp.url);
            }
            Ok(())
        }
        Cmd::Links(args) => links::list(&cli.endpoint, &cli.token, cli.json, args).await,
        Cmd::Summarize(args) => links::summarize(&cli.endpoint, &cli.token, cli.json, args).await,
        Cmd::Lookup(args) => links::lookup(&cli.endpoint, &cli.token, cli.json, args).await,
        Cmd::WaitReady { timeout_secs } => {
            let deadline = Instant::now() + Duration::from_secs(timeout_secs);
            loop {
                let status = async {
                    let mut h = HealthClient::new(channel(&cli.endpoint).await?);
                    let r = h
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await?;
                    anyhow::Ok(r.into_inner().status)
                }
                .await;
                if matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!(
                        "presignd at {} not SERVING after {timeout_secs}s (last: {status:?})",
                        cli.endpoint
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
