//! `presignctl links`, `summarize`, `lookup` and `verify`: the dashboards from a terminal,
//! as aligned text or, with --json, one JSON document for scripts.

use crate::Conn;
use anyhow::{Context, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use presignd::proto::{self, link_service_client::LinkServiceClient};
use serde_json::{Value, json};
use std::io::Read;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds the bearer token, if any (with mTLS the certificate names the caller).
#[derive(Clone)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            r.metadata_mut().insert("authorization", token.clone());
        }
        Ok(r)
    }
}

pub(crate) type Client = LinkServiceClient<InterceptedService<Channel, Bearer>>;

pub(crate) async fn client(conn: &Conn) -> anyhow::Result<Client> {
    let bearer = Bearer(crate::bearer(conn)?);
    Ok(LinkServiceClient::with_interceptor(
        crate::channel(conn).await?,
        bearer,
    ))
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s:?} is not an RFC 3339 time (2025-01-31T12:00:00Z): {e}"))
}

fn parse_state(s: &str) -> Result<proto::LinkState, String> {
    let state = presignd::domain::LinkState::parse(s).map_err(|e| e.reason)?;
    let name = format!("LINK_STATE_{}", state.as_str().to_ascii_uppercase());
    Ok(proto::LinkState::from_str_name(&name).expect("every link state has a proto name"))
}

fn parse_group_by(s: &str) -> Result<proto::GroupBy, String> {
    match s.to_ascii_lowercase().as_str() {
        "key" => Ok(proto::GroupBy::Key),
        "signer" => Ok(proto::GroupBy::Signer),
        "bucket" => Ok(proto::GroupBy::Bucket),
        "caller" => Ok(proto::GroupBy::Caller),
        _ => Err(format!("{s:?}: expected key, signer, bucket or caller")),
    }
}

/// The filters of `links` and `summarize`; each one narrows.
#[derive(Args)]
pub struct Filter {
    /// active, expired or revoked.
    #[arg(long, value_parser = parse_state)]
    state: Option<proto::LinkState>,
    #[arg(long)]
    bucket: Option<String>,
    /// Object keys starting with this (plain text, no wildcards).
    #[arg(long)]
    prefix: Option<String>,
    /// The caller the links were issued to.
    #[arg(long)]
    caller: Option<String>,
    /// The access key id that signed the links.
    #[arg(long)]
    key_id: Option<String>,
    #[arg(long)]
    signer: Option<String>,
    /// Links expiring at or after this RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    expires_after: Option<DateTime<Utc>>,
    /// Links expiring before this RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    expires_before: Option<DateTime<Utc>>,
}

impl Filter {
    fn to_proto(&self) -> proto::LinkFilter {
        let ts = |t: &Option<DateTime<Utc>>| {
            t.map(|t| prost_types::Timestamp {
                seconds: t.timestamp(),
                nanos: t.timestamp_subsec_nanos() as i32,
            })
        };
        proto::LinkFilter {
            state: self.state.unwrap_or(proto::LinkState::Unspecified) as i32,
            bucket: self.bucket.clone().unwrap_or_default(),
            object_key_prefix: self.prefix.clone().unwrap_or_default(),
            caller: self.caller.clone().unwrap_or_default(),
            key_id: self.key_id.clone().unwrap_or_default(),
            signer: self.signer.clone().unwrap_or_default(),
            expires_after: ts(&self.expires_after),
            expires_before: ts(&self.expires_before),
        }
    }
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    filter: Filter,
    /// At most this many links (0: every matching link).
    #[arg(long, default_value_t = 100)]
    limit: u64,
    /// Continue from a previous --json output's next_page_token.
    #[arg(long)]
    page_token: Option<String>,
}

#[derive(Args)]
pub struct SummarizeArgs {
    #[command(flatten)]
    filter: Filter,
    /// key, signer, bucket or caller.
    #[arg(long = "by", value_parser = parse_group_by)]
    group_by: proto::GroupBy,
}

#[derive(Args)]
pub struct LookupArgs {
    /// The presigned URL, or "-" (the default) to read it from stdin. A URL is a
    /// bearer credential: on the command line it lands in shell history and in
    /// the process list, so prefer stdin.
    #[arg(default_value = "-")]
    url: String,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The link's id. Without it, the presigned URL is read from stdin (never
    /// from the command line: a URL is a bearer credential).
    #[arg(long = "link")]
    link_id: Option<String>,
}

fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

fn state(s: i32) -> &'static str {
    match proto::LinkState::try_from(s) {
        Ok(proto::LinkState::Active) => "active",
        Ok(proto::LinkState::Expired) => "expired",
        Ok(proto::LinkState::Revoked) => "revoked",
        _ => "unknown",
    }
}

fn method(m: i32) -> &'static str {
    match proto::Method::try_from(m) {
        Ok(proto::Method::Get) => "GET",
        Ok(proto::Method::Put) => "PUT",
        Ok(proto::Method::Head) => "HEAD",
        Ok(proto::Method::Delete) => "DELETE",
        Ok(proto::Method::Post) => "POST",
        _ => "?",
    }
}

fn link_json(l: &proto::Link) -> Value {
    json!({
        "id": l.id, "state": state(l.state), "method": method(l.method),
        "bucket": l.bucket, "object_key": l.object_key,
        "object_key_is_prefix": l.object_key_is_prefix, "caller": l.caller,
        "signer": l.signer, "key_id": l.key_id,
        "issued_at": time(&l.issued_at), "expires_at": time(&l.expires_at),
        "labels": l.labels, "revocation_id": l.revocation_id,
    })
}

pub async fn list(conn: &Conn, as_json: bool, args: ListArgs) -> anyhow::Result<()> {
    let mut client = client(conn).await?;
    let filter = args.filter.to_proto();
    let mut links = Vec::new();
    let mut page_token = args.page_token.unwrap_or_default();
    loop {
        let wanted = match args.limit {
            0 => 1000,
            n => (n - links.len() as u64).min(1000),
        };
        let page = client
            .list_links(proto::ListLinksRequest {
                filter: Some(filter.clone()),
                page_size: wanted as u32,
                page_token: page_token.clone(),
            })
            .await
            .map_err(crate::status_error)?
            .into_inner();
        links.extend(page.links);
        page_token = page.next_page_token;
        if page_token.is_empty() || (args.limit != 0 && links.len() as u64 >= args.limit) {
            break;
        }
    }
    if as_json {
        let out = json!({
            "links": links.iter().map(link_json).collect::<Vec<_>>(),
            "next_page_token": page_token,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "{:<36}  {:<7}  {:<6}  {:<20}  {:<20}  {:<20}  OBJECT",
        "ID", "STATE", "METHOD", "CALLER", "KEY", "EXPIRES"
    );
    for l in &links {
        println!(
            "{:<36}  {:<7}  {:<6}  {:<20}  {:<20}  {:<20}  s3://{}/{}{}",
            l.id,
            state(l.state),
            method(l.method),
            l.caller,
            l.key_id,
            time(&l.expires_at),
            l.bucket,
            l.object_key,
            // A prefix form: every key starting with object_key.
            if l.object_key_is_prefix { "*" } else { "" }
        );
    }
    if !page_token.is_empty() {
        eprintln!("more links match: raise --limit, or continue with --page-token {page_token}");
    }
    Ok(())
}

pub async fn summarize(conn: &Conn, as_json: bool, args: SummarizeArgs) -> anyhow::Result<()> {
    let mut client = client(conn).await?;
    let groups = client
        .summarize_links(proto::SummarizeLinksRequest {
            filter: Some(args.filter.to_proto()),
            group_by: args.group_by as i32,
        })
        .await
        .map_err(crate::status_error)?
        .into_inner()
        .groups;
    if as_json {
        let groups: Vec<Value> = groups
            .iter()
            .map(|g| {
                json!({
                    "group": g.group, "active": g.active, "expired": g.expired,
                    "revoked": g.revoked, "latest_expiry": time(&g.latest_expiry),
                })
            })
            .collect();
        println!("{}", json!({ "groups": groups }));
        return Ok(());
    }
    println!(
        "{:<30}  {:>10}  {:>10}  {:>10}  LATEST EXPIRY",
        "GROUP", "ACTIVE", "EXPIRED", "REVOKED"
    );
    for g in &groups {
        println!(
            "{:<30}  {:>10}  {:>10}  {:>10}  {}",
            g.group,
            g.active,
            g.expired,
            g.revoked,
            time(&g.latest_expiry)
        );
    }
    Ok(())
}

fn counts(c: &[proto::Count]) -> String {
    match c {
        [] => "-".into(),
        c => c
            .iter()
            .map(|c| format!("{} {}", c.name, c.count))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn counts_json(c: &[proto::Count]) -> Value {
    c.iter()
        .map(|c| json!({ "name": c.name, "count": c.count }))
        .collect()
}

pub async fn lookup(conn: &Conn, as_json: bool, args: LookupArgs) -> anyhow::Result<()> {
    let url = match args.url.as_str() {
        "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the URL from stdin")?;
            s.trim().to_owned()
        }
        url => url.to_owned(),
    };
    if url.is_empty() {
        bail!("no URL: give it as the argument or on stdin");
    }
    let mut client = client(conn).await?;
    let found = client
        .lookup_link(proto::LookupLinkRequest { url })
        .await
        .map_err(crate::status_error)?
        .into_inner();
    let link = found.link.unwrap_or_default();
    if as_json {
        let radius = found.blast_radius.as_ref().map(|r| {
            json!({
                "key_id": r.key_id, "signer": r.signer,
                "outstanding_links": r.outstanding_links,
                "earliest_expiry": time(&r.earliest_expiry),
                "latest_expiry": time(&r.latest_expiry),
                "top_buckets": counts_json(&r.top_buckets),
                "top_callers": counts_json(&r.top_callers),
                "per_method": counts_json(&r.per_method),
                "sample_link_ids": r.sample_link_ids,
                "computed_at": time(&r.computed_at),
            })
        });
        println!(
            "{}",
            json!({ "link": link_json(&link), "blast_radius": radius, "revoke_command": revoke_command(&link) })
        );
        return Ok(());
    }
    println!("link       {}", link.id);
    println!("state      {}", state(link.state));
    println!("method     {}", method(link.method));
    println!("object     s3://{}/{}", link.bucket, link.object_key);
    println!("caller     {}", link.caller);
    println!("signed by  key {} of signer {}", link.key_id, link.signer);
    println!("issued     {}", time(&link.issued_at));
    println!("expires    {}", time(&link.expires_at));
    let Some(r) = found.blast_radius else {
        println!("\nblast radius: shown to admins only");
        return Ok(());
    };
    println!(
        "\nblast radius of revoking key {} (as of {}):",
        r.key_id,
        time(&r.computed_at)
    );
    println!("  outstanding links  {}", r.outstanding_links);
    println!(
        "  expiring           {} .. {}",
        time(&r.earliest_expiry),
        time(&r.latest_expiry)
    );
    println!("  per method         {}", counts(&r.per_method));
    println!("  top buckets        {}", counts(&r.top_buckets));
    println!("  top callers        {}", counts(&r.top_callers));
    println!("  sample links       {}", r.sample_link_ids.join(", "));
    match revoke_command(&link) {
        Some(cmd) => println!(
            "\nto kill this link (and every link of key {}) now:\n  {cmd}",
            link.key_id
        ),
        None => println!("\nthis link is dead already: its key is deactivated"),
    }
    Ok(())
}

/// The command that kills a live link's key (None once the link is revoked).
fn revoke_command(link: &proto::Link) -> Option<String> {
    (link.state != proto::LinkState::Revoked as i32).then(|| {
        format!(
            "presignctl revoke --key {} --reason 'leaked link {}'",
            link.key_id, link.id
        )
    })
}

/// `presignctl verify`: prints the verdict and the store's answer; exits 0 for
/// OK, 1 for any other verdict (and for an error).
pub async fn verify(conn: &Conn, as_json: bool, args: VerifyArgs) -> anyhow::Result<bool> {
    use proto::verify_link_request::Link;
    let link = match args.link_id {
        Some(id) => Link::LinkId(id),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the URL from stdin")?;
            if s.trim().is_empty() {
                bail!("no URL on stdin (or give --link ID)");
            }
            Link::Url(s.trim().to_owned())
        }
    };
    let mut client = client(conn).await?;
    let v = client
        .verify_link(proto::VerifyLinkRequest { link: Some(link) })
        .await
        .map_err(crate::status_error)?
        .into_inner();
    let verdict = proto::Verdict::try_from(v.verdict)
        .map(|v| v.as_str_name().trim_start_matches("VERDICT_").to_owned())
        .unwrap_or_else(|_| v.verdict.to_string());
    let ok = v.verdict == proto::Verdict::Ok as i32;
    let link = v.link.unwrap_or_default();
    if as_json {
        println!(
            "{}",
            json!({
                "verdict": verdict, "expected_region": v.expected_region,
                "store": { "status": v.store_status, "code": v.store_code, "message": v.store_message },
                "link": link_json(&link),
            })
        );
        return Ok(ok);
    }
    println!("verdict    {verdict}");
    if !v.expected_region.is_empty() {
        println!("region     the store expects {}", v.expected_region);
    }
    if v.store_status != 0 {
        println!(
            "store      HTTP {} {} {}",
            v.store_status, v.store_code, v.store_message
        );
    }
    println!("link       {}", link.id);
    println!("state      {}", state(link.state));
    println!("object     s3://{}/{}", link.bucket, link.object_key);
    println!("signed by  key {} of signer {}", link.key_id, link.signer);
    println!("expires    {}", time(&link.expires_at));
    Ok(ok)
}
