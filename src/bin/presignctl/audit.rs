//! `presignctl audit`: the audit trail, newest first (admins).

use crate::{Conn, status_error};
use clap::Args;
use presignd::proto;

#[derive(Args)]
pub struct AuditArgs {
    /// Only this caller's events.
    #[arg(long)]
    caller: Option<String>,
    /// How many events at most.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| "-".into())
}

pub async fn audit(conn: &Conn, args: AuditArgs) -> anyhow::Result<()> {
    let mut client = crate::keys::client(conn).await?;
    let (mut shown, mut token) = (0, String::new());
    while shown < args.limit {
        let page = client
            .list_audit_events(proto::ListAuditEventsRequest {
                caller: args.caller.clone().unwrap_or_default(),
                page_size: (args.limit - shown).min(1000) as u32,
                page_token: token,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        for e in &page.events {
            shown += 1;
            if conn.json {
                let line = serde_json::json!({
                    "id": e.id, "at": ts(&e.at), "caller": e.caller, "peer": e.peer,
                    "rpc": e.rpc, "target": e.target, "code": e.code, "message": e.message,
                });
                println!("{line}");
            } else {
                let caller = if e.caller.is_empty() { "-" } else { &e.caller };
                println!(
                    "{}  {:<20} {:<40} {:<19} {}  {}",
                    ts(&e.at),
                    caller,
                    e.rpc,
                    e.code,
                    e.target,
                    e.message
                );
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    Ok(())
}
