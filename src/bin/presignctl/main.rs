//! presignctl: the command line for operators and scripts. Talks to a running
//! presignd over gRPC with a bearer token (PRESIGND_TOKEN) and/or a client
//! certificate (mTLS, see tls.rs).

mod audit;
mod form;
mod keys;
mod tls;

mod links;
mod repair;
mod upload;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use presignd::proto;
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
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Cmd,
}

/// How to reach presignd, and how to print: shared by every command.
#[derive(clap::Args)]
pub(crate) struct Conn {
    /// presignd's gRPC endpoint.
    #[arg(
        long,
        env = "PRESIGND_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub(crate) endpoint: String,
    /// Bearer token identifying you to presignd.
    #[arg(long, env = "PRESIGND_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) tls: tls::TlsArgs,
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
        /// Makes the call safe to repeat: the same id with the same request
        /// returns the same link (and URL) while it lives, never a second one.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Issue a browser upload form (a presigned POST policy) and print its URL
    /// and fields (the signature among them: a bearer credential, stdout
    /// only), or post FILE with it (--upload) and print the store's status.
    Form(form::FormArgs),
    /// List links, newest first, narrowed by the filters.
    Links(links::ListArgs),
    /// Count links per state, grouped by key, signer, bucket or caller.
    Summarize(links::SummarizeArgs),
    /// Which link is this URL? Prints it and the blast radius of its key.
    Lookup(links::LookupArgs),
    /// Why does this link work or fail, now? Asks the store (URL on stdin, or
    /// --link ID); exits 1 unless the verdict is OK.
    Verify(links::VerifyArgs),
    /// Wait until presignd reports SERVING (exit 1 on timeout).
    WaitReady {
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Signers and their keys, with outstanding links (admins).
    Keys {
        #[arg(long)]
        signer: Option<String>,
    },
    /// What breaks if a key is deactivated: the blast radius (admins).
    Plan(keys::PlanArgs),
    /// Rotate a signer's key: shows the plan, asks, rotates, reports (admins).
    #[command(after_help = EXIT_CODES)]
    Rotate(keys::RotateArgs),
    /// Deactivate one key now, whatever its state: the incident path after
    /// `lookup` (a retired key dies at once; the active one is replaced first,
    /// so issuance never pauses). Shows the plan, asks, revokes, reports (admins).
    #[command(after_help = EXIT_CODES)]
    Revoke(keys::RevokeArgs),
    /// Abandon a revocation stuck on an outage; prints the keys live afterwards (admins).
    CancelRevocation {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Fresh URLs for your links a revocation killed (not the quarantined
    /// ones): one JSON line each on stdout (they are bearer credentials), the
    /// links not reissued and why on stderr.
    Reissue(repair::ReissueArgs),
    /// Upload a local file through a multipart upload (presigned part URLs,
    /// completed by presignd); prints the upload id and the SHA-256 sent.
    Upload(upload::UploadArgs),
    /// Follow the revocations that kill your links (admins: anyone's), one
    /// line each; reconnects from the last sequence if the server goes away,
    /// exits 1 on a refusal (credentials, another caller's, a pruned cursor).
    Watch(repair::WatchArgs),
    /// The audit trail, newest first: admin calls and denied requests (admins).
    Audit(audit::AuditArgs),
    /// One revocation by id, or the latest ones (admins).
    Revocations {
        id: Option<String>,
        #[arg(long)]
        signer: Option<String>,
    },
}

const EXIT_CODES: &str = "Exit codes: 0 succeeded; 2 failed or cancelled (the report says which step and \
what is live); 3 still running after --timeout-secs (the server resumes it: follow it with \
`presignctl revocations ID`); 4 refused (permission, precondition, unknown signer or key); \
5 presignd unreachable; 1 anything else (bad arguments, not confirmed).";

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
        std::process::exit(e.downcast_ref::<keys::Exit>().map_or(1, |e| e.code));
    }
}

pub(crate) async fn channel(conn: &Conn) -> anyhow::Result<Channel> {
    let endpoint = &conn.endpoint;
    let mut builder = Channel::from_shared(endpoint.to_owned())
        .context("invalid --endpoint")?
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = conn.tls.client_config()? {
        builder = builder.tls_config(tls).context("TLS settings")?;
    }
    builder
        .connect()
        .await
        .with_context(|| format!("cannot connect to presignd at {endpoint}"))
}

/// The authorization metadata, if a token is given; with neither a token nor
/// a client certificate there is no way in.
pub(crate) fn bearer(conn: &Conn) -> anyhow::Result<Option<MetadataValue<tonic::metadata::Ascii>>> {
    let Some(token) = conn.token.as_deref() else {
        if conn.tls.client_cert.is_some() {
            return Ok(None);
        }
        anyhow::bail!("no credentials: set PRESIGND_TOKEN (--token) or --client-cert");
    };
    format!("Bearer {token}")
        .parse()
        .map(Some)
        .context("the token is not valid ASCII")
}

pub(crate) fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let conn = &cli.conn;
    match cli.command {
        Cmd::Keys { signer } => keys::keys(conn, signer).await,
        Cmd::Audit(args) => audit::audit(conn, args).await,
        Cmd::Plan(args) => keys::plan(conn, args).await,
        Cmd::Rotate(args) => keys::rotate(conn, args).await,
        Cmd::Revoke(args) => keys::revoke(conn, args).await,
        Cmd::CancelRevocation { id, reason } => keys::cancel(conn, id, reason).await,
        Cmd::Revocations { id, signer } => keys::revocations(conn, id, signer).await,
        Cmd::Issue {
            bucket,
            key,
            method,
            ttl,
            content_type,
            labels,
            request_id,
        } => {
            let mut client = links::client(conn).await?;
            let method = presignd::domain::Method::parse(&method)?;
            let method = proto::Method::from_str_name(&format!("METHOD_{}", method.as_str()))
                .expect("every method has a proto name");
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
                    request_id: request_id.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if conn.json {
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
        Cmd::Form(args) => form::form(conn, args).await,
        Cmd::Reissue(args) => repair::reissue(conn, args).await,
        Cmd::Watch(args) => repair::watch(conn, args).await,
        Cmd::Upload(args) => upload::upload(conn, args).await,
        Cmd::Links(args) => links::list(conn, conn.json, args).await,
        Cmd::Summarize(args) => links::summarize(conn, conn.json, args).await,
        Cmd::Lookup(args) => links::lookup(conn, conn.json, args).await,
        Cmd::Verify(args) => match links::verify(conn, conn.json, args).await? {
            true => Ok(()),
            false => std::process::exit(1),
        },
        Cmd::WaitReady { timeout_secs } => wait_ready(conn, timeout_secs).await,
    }
}

/// Polls the health service until SERVING. On timeout, says what the server
/// last answered: the status by name and, when it is not serving, why (the
/// server's last readiness error), or that it could not be reached at all.
async fn wait_ready(conn: &Conn, timeout_secs: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        let last = async {
            let mut h = HealthClient::new(channel(conn).await?);
            let r = h
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map_err(status_error)?;
            let reason = r
                .metadata()
                .get(presignd::health::NOT_READY_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            anyhow::Ok((r.into_inner().status(), reason))
        }
        .await;
        if matches!(last, Ok((ServingStatus::Serving, _))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let endpoint = &conn.endpoint;
            match last {
                Ok((status, reason)) => bail!(
                    "presignd at {endpoint} is not SERVING after {timeout_secs}s: health says {}{}",
                    status.as_str_name(),
                    reason.map_or_else(String::new, |r| format!(" because: {r}"))
                ),
                Err(e) => {
                    bail!("presignd at {endpoint} did not answer within {timeout_secs}s: {e:#}")
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
