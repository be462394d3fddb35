//! The security team's commands: keys, plan, rotate, revocations.

use crate::{Conn, status_error};
use anyhow::bail;
use clap::{Args, ValueEnum};
use presignd::proto::{
    self, key_service_client::KeyServiceClient, plan_revocation_request::Target,
};
use serde_json::{Value, json};
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

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
    /// A link that leaked (repeatable): killed like the others, never reissued.
    #[arg(long = "quarantine", value_name = "LINK_ID")]
    quarantine: Vec<String>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
pub struct RevokeArgs {
    /// The key to deactivate (`presignctl lookup` names it for a leaked URL).
    #[arg(long)]
    key: String,
    /// Why (recorded in the revocation).
    #[arg(long)]
    reason: String,
    /// A link that leaked (repeatable): killed like the others, never reissued.
    #[arg(long = "quarantine", value_name = "LINK_ID")]
    quarantine: Vec<String>,
    #[command(flatten)]
    run: RunArgs,
}

/// How `rotate` and `revoke` run and report.
#[derive(Args)]
pub struct RunArgs {
    /// Show the plan and stop.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Print each step as it finishes.
    #[arg(long)]
    wait: bool,
    /// Stop following after this long (exit 3 if it is still running: the
    /// server finishes it by itself).
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
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
        Ok(proto::RevocationState::Cancelled) => "CANCELLED",
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
        "quarantined_link_ids": r.quarantined_link_ids,
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
    if !r.quarantined_link_ids.is_empty() {
        println!("  quarantined        {}", r.quarantined_link_ids.join(", "));
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
                "buckets": k.buckets.iter().map(|b| json!({
                    "bucket": b.bucket, "ready": b.ready, "cause": b.cause, "region": b.region,
                    "checked_at": ts(&b.checked_at),
                })).collect::<Vec<_>>(),
                "budget": s.budget.as_ref().map(|b| json!({
                    "max_outstanding_links": b.max_outstanding_links,
                    "max_age_secs": b.max_age.as_ref().map(|d| d.seconds),
                })),
                "budget_share": k.budget_share.as_ref().map(|u| json!({
                    "outstanding_share": u.outstanding_share,
                    "age_secs": u.age.as_ref().map(|d| d.seconds),
                    "age_share": u.age_share,
                })),
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
            if let (Some(budget), Some(share)) = (&s.budget, &k.budget_share) {
                println!("    budget {}", budget_use(budget, share));
            }
            // The preflight: what IssueLink signs for with this key, or why not.
            for b in &k.buckets {
                match b.ready {
                    true => println!("    bucket {} ready ({})", b.bucket, b.region),
                    false => println!("    bucket {} NOT READY: {}", b.bucket, b.cause),
                }
            }
        }
    }
    Ok(())
}

/// A key's share of its signer's blast-radius budget, e.g. "links 75% of
/// 1000, age 2h of 24h (8%)": each limit the budget sets.
fn budget_use(budget: &proto::KeyBudget, share: &proto::KeyBudgetShare) -> String {
    let mut parts = Vec::new();
    if budget.max_outstanding_links > 0 {
        parts.push(format!(
            "links {:.0}% of {}",
            share.outstanding_share * 100.0,
            budget.max_outstanding_links
        ));
    }
    if let Some(max) = &budget.max_age {
        let age = share.age.as_ref().map_or(0, |d| d.seconds);
        parts.push(format!(
            "age {} of {} ({:.0}%)",
            duration(age),
            duration(max.seconds),
            share.age_share * 100.0
        ));
    }
    parts.join(", ")
}

/// Seconds as the largest whole unit among d, h, m, s ("90m" stays "90m").
fn duration(secs: i64) -> String {
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= n && secs % n == 0 {
            return format!("{}{unit}", secs / n);
        }
    }
    if secs >= 3_600 {
        return format!("{}h{}m", secs / 3_600, secs % 3_600 / 60);
    }
    format!("{secs}s")
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
    let mut client = client(cli).await.map_err(unreachable)?;
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
        detach: true,
        quarantine_link_ids: args.quarantine,
    };
    let plan = client
        .rotate_key(req.clone())
        .await
        .map_err(refused)?
        .into_inner();
    let question = format!(
        "Rotate signer {} in mode {} now? Type the signer's name to confirm: ",
        args.signer,
        mode.as_str_name()
    );
    if !confirmed(cli, &args.run, &plan, &question, &args.signer)? {
        return Ok(());
    }
    // Rotate the key the plan was computed for, and no other.
    req.dry_run = false;
    req.expected_key_id = plan.old_key_id.clone();
    let started = client.rotate_key(req).await.map_err(refused)?.into_inner();
    follow(cli, &mut client, started, &args.run).await
}

pub async fn revoke(cli: &Conn, args: RevokeArgs) -> anyhow::Result<()> {
    let mut client = client(cli).await.map_err(unreachable)?;
    let mut req = proto::RevokeKeyRequest {
        key_id: args.key.clone(),
        reason: args.reason,
        dry_run: true,
        detach: true,
        quarantine_link_ids: args.quarantine,
    };
    let plan = client
        .revoke_key(req.clone())
        .await
        .map_err(refused)?
        .into_inner();
    let question = format!(
        "Deactivate key {} now (every link it signed dies)? Type the key id to confirm: ",
        args.key
    );
    if !confirmed(cli, &args.run, &plan, &question, &args.key)? {
        return Ok(());
    }
    req.dry_run = false;
    let started = client.revoke_key(req).await.map_err(refused)?.into_inner();
    follow(cli, &mut client, started, &args.run).await
}

/// Shows the plan and asks for `answer` typed back, unless `--yes` (or
/// `--dry-run`: then only the plan is shown, and false is returned).
fn confirmed(
    cli: &Conn,
    run: &RunArgs,
    plan: &proto::Revocation,
    question: &str,
    answer: &str,
) -> anyhow::Result<bool> {
    if run.dry_run {
        if cli.json {
            println!("{}", revocation_json(plan))
        } else {
            print_revocation(plan)
        }
        return Ok(false);
    }
    if run.yes {
        return Ok(true);
    }
    if cli.json || !std::io::stdin().is_terminal() {
        bail!("refusing to act without --yes when not asking a person at a terminal");
    }
    print_revocation(plan);
    print!("\n{question}");
    std::io::stdout().flush()?;
    let mut typed = String::new();
    std::io::stdin().lock().read_line(&mut typed)?;
    if typed.trim() != answer {
        bail!("not confirmed; nothing was done");
    }
    Ok(true)
}

/// Follows a started revocation with GetRevocation until it ends or
/// `--timeout-secs` pass; with `--wait`, prints each step as it finishes.
/// The exit code says the outcome (see `Exit`).
async fn follow(
    cli: &Conn,
    client: &mut Client,
    mut r: proto::Revocation,
    run: &RunArgs,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(run.timeout_secs);
    let (mut shown, mut last_error) = (0, String::new());
    loop {
        if run.wait {
            for s in r.steps.iter().skip(shown) {
                print_step(cli, s);
            }
            shown = r.steps.len();
            if r.state == proto::RevocationState::Running as i32
                && !r.error.is_empty()
                && r.error != last_error
            {
                if cli.json {
                    println!("{}", json!({"retrying": r.error}));
                } else {
                    println!("  retrying: {}", r.error);
                }
                last_error = r.error.clone();
            }
        }
        let state = proto::RevocationState::try_from(r.state).unwrap_or_default();
        let running = state == proto::RevocationState::Running;
        if !running || Instant::now() >= deadline {
            if cli.json {
                println!("{}", revocation_json(&r))
            } else {
                print_revocation(&r)
            }
        }
        match state {
            proto::RevocationState::Succeeded => return Ok(()),
            proto::RevocationState::Running if Instant::now() < deadline => {}
            proto::RevocationState::Running => {
                return Err(Exit::still_running(format!(
                    "revocation {} is still RUNNING after {}s{}; the server resumes it by itself: follow it with `presignctl revocations {}`",
                    r.id,
                    run.timeout_secs,
                    if r.error.is_empty() {
                        String::new()
                    } else {
                        format!(" (last error: {})", r.error)
                    },
                    r.id
                )));
            }
            _ => {
                return Err(Exit::failed(format!(
                    "revocation {} is {}: {}",
                    r.id,
                    state_name(r.state),
                    r.error
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        r = client
            .get_revocation(proto::GetRevocationRequest { id: r.id.clone() })
            .await
            .map_err(refused)?
            .into_inner();
    }
}

fn print_step(cli: &Conn, s: &proto::Step) {
    if cli.json {
        println!(
            "{}",
            json!({"step": s.name, "started_at": ts(&s.started_at), "finished_at": ts(&s.finished_at), "error": s.error})
        );
    } else if s.error.is_empty() {
        println!("  step {:<20} done at {}", s.name, ts(&s.finished_at));
    } else {
        println!(
            "  step {:<20} FAILED at {}: {}",
            s.name,
            ts(&s.finished_at),
            s.error
        );
    }
}

/// The exit code of `rotate` and `revoke`, by outcome (documented in
/// `--help` and the README): 0 succeeded, 2 failed (or cancelled), 3 still
/// running (the server resumes it), 4 refused (permission or precondition),
/// 5 presignd unreachable; 1 anything else (usage, not confirmed).
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

impl Exit {
    fn failed(message: String) -> anyhow::Error {
        Self { code: 2, message }.into()
    }

    fn still_running(message: String) -> anyhow::Error {
        Self { code: 3, message }.into()
    }
}

/// A gRPC refusal: 4 for permission or precondition, 5 when presignd cannot
/// be reached.
fn refused(s: tonic::Status) -> anyhow::Error {
    use tonic::Code::*;
    let code = match s.code() {
        PermissionDenied | Unauthenticated | FailedPrecondition | NotFound | InvalidArgument
        | AlreadyExists | OutOfRange => 4,
        Unavailable | DeadlineExceeded => 5,
        _ => 1,
    };
    Exit {
        code,
        message: status_error(s).to_string(),
    }
    .into()
}

fn unreachable(e: anyhow::Error) -> anyhow::Error {
    Exit {
        code: 5,
        message: format!("{e:#}"),
    }
    .into()
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

pub async fn cancel(cli: &Conn, id: String, reason: String) -> anyhow::Result<()> {
    let resp = client(cli)
        .await
        .map_err(unreachable)?
        .cancel_revocation(proto::CancelRevocationRequest { id, reason })
        .await
        .map_err(refused)?
        .into_inner();
    let r = resp.revocation.unwrap_or_default();
    if cli.json {
        let live: Vec<Value> = resp
            .live_keys
            .iter()
            .map(|k| json!({"key_id": k.key_id, "state": key_state(k.state), "outstanding_links": k.outstanding_links}))
            .collect();
        println!(
            "{}",
            json!({"revocation": revocation_json(&r), "live_keys": live})
        );
        return Ok(());
    }
    print_revocation(&r);
    println!("\nKeys of signer {} live at the backend now:", r.signer);
    if resp.live_keys.is_empty() {
        println!("  none: issuance for this signer is paused until a rotation gives it a key");
    }
    for k in &resp.live_keys {
        println!(
            "  {:<28} {:<8} {:>8} outstanding links   (kill: presignctl revoke --key {} --reason '...')",
            k.key_id,
            key_state(k.state),
            k.outstanding_links,
            k.key_id
        );
    }
    Ok(())
}
