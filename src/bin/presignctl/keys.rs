//! The security team's commands: keys, plan, rotate, revocations.

use crate::{Conn, status_error};
use anyhow::bail;
use clap::{Args, ValueEnum};
use presignd::proto::{
    self, key_service_client::KeyServiceClient, plan_revocation_request::Target,
};
use serde_json::{Value, json};
use std::io::{BufRead, IsTerminal, Write};

#[derive(Args)]
pub struct PlanArgs {
    /// The signer whose active key would be revoked.
    #[arg(long, conflicts_with = "key", required_unless_present = "key")]
    signer: Option<String>,
    /// A key id.
    #[arg(long)]
    key: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// New key, old one retired: nothing breaks.
    Graceful,
    /// New key, then the old one deactivated: its links die.
    Revoke,
    /// Old key deactivated first, then a new one: issuance pauses in between.
    Emergency,
}

#[derive(Args)]
pub struct RotateArgs {
    #[arg(long)]
    signer: String,
    #[arg(long, value_enum)]
    mode: ModeArg,
    /// Why (recorded in the revocation).
    #[arg(long)]
    reason: String,
    /// Rotate only if this is still the signer's active key (default: the key the
    /// plan shown to you was computed for).
    #[arg(long)]
    expected_key: Option<String>,
    /// Show the plan and stop.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
}

type Interceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Client = KeyServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Interceptor>,
>;

pub async fn client(cli: &Conn) -> anyhow::Result<Client> {
    let auth = crate::bearer(cli)?;
    let channel = crate::channel(cli).await?;
    let interceptor: Interceptor = Box::new(move |mut r: tonic::Request<()>| {
        if let Some(a) = &auth {
            r.metadata_mut().insert("authorization", a.clone());
        }
        Ok(r)
    });
    Ok(KeyServiceClient::with_interceptor(channel, interceptor))
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

fn counts(c: &[proto::Count]) -> Value {
    c.iter()
        .map(|c| json!({"name": c.name, "count": c.count}))
        .collect()
}

pub fn radius_json(b: &proto::BlastRadius) -> Value {
    json!({
        "key_id": b.key_id, "signer": b.signer, "outstanding_links": b.outstanding_links,
        "earliest_expiry": ts(&b.earliest_expiry), "latest_expiry": ts(&b.latest_expiry),
        "top_buckets": counts(&b.top_buckets), "top_callers": counts(&b.top_callers),
        "per_method": counts(&b.per_method), "sample_link_ids": b.sample_link_ids,
        "computed_at": ts(&b.computed_at),
    })
}

pub fn print_radius(b: &proto::BlastRadius) {
    println!("Blast radius of key {} (signer {})", b.key_id, b.signer);
    println!("  outstanding links  {}", b.outstanding_links);
    println!("  earliest expiry    {}", ts(&b.earliest_expiry));
    println!("  latest expiry      {}", ts(&b.latest_expiry));
    for (title, list) in [
        ("top buckets", &b.top_buckets),
        ("top callers", &b.top_callers),
        ("per method", &b.per_method),
    ] {
        println!("  {title}:");
        for c in list {
            println!("    {:<40} {:>10}", c.name, c.count);
        }
    }
    if !b.sample_link_ids.is_empty() {
        println!("  sample links       {}", b.sample_link_ids.join(", "));
    }
}

/// "active", "retired"... as operators say it.
fn key_state(s: i32) -> String {
    proto::KeyState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("KEY_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| "?".into())
}

fn state_name(s: i32) -> &'static str {
    match proto::RevocationState::try_from(s) {
        Ok(proto::RevocationState::Planned) => "PLANNED",
        Ok(proto::RevocationState::Running) => "RUNNING",
        Ok(proto::RevocationState::Succeeded) => "SUCCEEDED",
        Ok(proto::RevocationState::Failed) => "FAILED",
        _ => "UNKNOWN",
    }
}

fn revocation_json(r: &proto::Revocation) -> Value {
    json!({
        "id": r.id, "signer": r.signer, "state": state_name(r.state), "dry_run": r.dry_run,
        "mode": proto::RotationMode::try_from(r.mode).map(|m| m.as_str_name()).unwrap_or("?"),
        "requested_by": r.requested_by, "reason": r.reason,
        "old_key_id": r.old_key_id, "new_key_id": r.new_key_id, "links_revoked": r.links_revoked,
        "blast_radius": r.blast_radius.as_ref().map(radius_json),
        "steps": r.steps.iter().map(|s| json!({"name": s.name, "started_at": ts(&s.started_at), "finished_at": ts(&s.finished_at), "error": s.error})).collect::<Vec<_>>(),
        "created_at": ts(&r.created_at), "finished_at": ts(&r.finished_at), "error": r.error,
    })
}

fn print_revocation(r: &proto::Revocation) {
    if r.dry_run {
        println!("DRY RUN: nothing was touched.");
    } else {
        println!("Revocation {}  {}", r.id, state_name(r.state));
        println!("  requested by {}: {}", r.requested_by, r.reason);
    }
    println!(
        "  signer {}  old key {}  new key {}",
        r.signer,
        r.old_key_id,
        if r.new_key_id.is_empty() {
            "-"
        } else {
            &r.new_key_id
        }
    );
    if !r.dry_run {
        println!("  links revoked      {}", r.links_revoked);
    }
    println!("  steps:");
    for s in &r.steps {
        let err = if s.error.is_empty() {
            String::new()
        } else {
            format!("  ERROR: {}", s.error)
        };
        println!(
            "    {:<20} {} -> {}{err}",
            s.name,
            ts(&s.started_at),
            ts(&s.finished_at)
        );
    }
    if !r.error.is_empty() {
        println!("  error: {}", r.error);
    }
    if let Some(b) = &r.blast_radius {
        print_radius(b);
    }
}

pub async fn keys(cli: &Conn, signer: Option<String>) -> anyhow::Result<()> {
    let resp = client(cli)
        .await?
        .list_signing_keys(proto::ListSigningKeysRequest {
            signer: signer.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if cli.json {
        let out: Vec<Value> = resp
            .signers
            .iter()
            .flat_map(|s| s.keys.iter().map(move |k| json!({
                "signer": s.name, "backend": s.backend, "key_id": k.key_id,
                "state": key_state(k.state),
                "outstanding_links": k.outstanding_links, "latest_expiry": ts(&k.latest_expiry), "created_at": ts(&k.created_at),
            })))
            .collect();
        println!("{}", Value::Array(out));
        return Ok(());
    }
    println!(
        "{:<16} {:<28} {:<10} {:>12}  {:<20}  CREATED",
        "SIGNER", "KEY", "STATE", "OUTSTANDING", "LATEST EXPIRY"
    );
    for s in &resp.signers {
        for k in &s.keys {
            let state = key_state(k.state);
            println!(
                "{:<16} {:<28} {:<10} {:>12}  {:<20}  {}",
                s.name,
                k.key_id,
                state,
                k.outstanding_links,
                ts(&k.latest_expiry),
                ts(&k.created_at)
            );
        }
    }
    Ok(())
}

pub async fn plan(cli: &Conn, args: PlanArgs) -> anyhow::Result<()> {
    let target = match (args.signer, args.key) {
        (_, Some(k)) => Target::KeyId(k),
        (Some(s), None) => Target::Signer(s),
        (None, None) => bail!("give --signer or --key"),
    };
    let b = client(cli)
        .await?
        .plan_revocation(proto::PlanRevocationRequest {
            target: Some(target),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if cli.json {
        println!("{}", radius_json(&b));
    } else {
        print_radius(&b);
    }
    Ok(())
}

pub async fn rotate(cli: &Conn, args: RotateArgs) -> anyhow::Result<()> {
    let mut client = client(cli).await?;
    let mode = match args.mode {
        ModeArg::Graceful => proto::RotationMode::Graceful,
        ModeArg::Revoke => proto::RotationMode::Revoke,
        ModeArg::Emergency => proto::RotationMode::Emergency,
    };
    let mut req = proto::RotateKeyRequest {
        signer: args.signer.clone(),
        mode: mode as i32,
        reason: args.reason,
        expected_key_id: args.expected_key.unwrap_or_default(),
        dry_run: true,
    };
    let plan = client
        .rotate_key(req.clone())
        .await
        .map_err(status_error)?
        .into_inner();
    if args.dry_run {
        if cli.json {
            println!("{}", revocation_json(&plan))
        } else {
            print_revocation(&plan)
        }
        return Ok(());
    }
    if !args.yes {
        if cli.json || !std::io::stdin().is_terminal() {
            bail!("refusing to rotate without --yes when not asking a person at a terminal");
        }
        print_revocation(&plan);
        print!(
            "\nRotate signer {} in mode {} now? Type the signer's name to confirm: ",
            args.signer,
            mode.as_str_name()
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != args.signer {
            bail!("not confirmed; nothing was done");
        }
    }
    // Rotate the key the plan was computed for, and no other.
    req.dry_run = false;
    req.expected_key_id = plan.old_key_id.clone();
    let report = client
        .rotate_key(req)
        .await
        .map_err(status_error)?
        .into_inner();
    if cli.json {
        println!("{}", revocation_json(&report))
    } else {
        print_revocation(&report)
    }
    if report.state != proto::RevocationState::Succeeded as i32 {
        bail!(
            "revocation {} is {}: {}",
            report.id,
            state_name(report.state),
            report.error
        );
    }
    Ok(())
}

pub async fn revocations(
    cli: &Conn,
    id: Option<String>,
    signer: Option<String>,
) -> anyhow::Result<()> {
    let mut client = client(cli).await?;
    let list = match id {
        Some(id) => vec![
            client
                .get_revocation(proto::GetRevocationRequest { id })
                .await
                .map_err(status_error)?
                .into_inner(),
        ],
        None => {
            client
                .list_revocations(proto::ListRevocationsRequest {
                    signer: signer.unwrap_or_default(),
                    page_size: 50,
                    page_token: String::new(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .revocations
        }
    };
    if cli.json {
        println!(
            "{}",
            Value::Array(list.iter().map(revocation_json).collect())
        );
    } else {
        for r in &list {
            print_revocation(r);
            println!();
        }
    }
    Ok(())
}
