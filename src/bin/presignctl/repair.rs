//! `presignctl reissue` and `watch`: after a revocation, fresh URLs for the
//! innocent links, and the events that say when one is needed.

use crate::Conn;
use crate::links::client;
use clap::Args;
use presignd::proto;
use serde_json::json;
use std::time::Duration;

#[derive(Args)]
pub struct ReissueArgs {
    /// The revocation (its report, or a `watch` event, names it).
    revocation_id: String,
    /// Admins: whose links (default: your own; an admin's: everyone's).
    #[arg(long)]
    caller: Option<String>,
}

#[derive(Args)]
pub struct WatchArgs {
    /// Resume after this sequence (the last one printed). Default: from now on.
    #[arg(long)]
    after: Option<u64>,
    /// Admins: one caller's events (default: everyone's).
    #[arg(long)]
    caller: Option<String>,
}

fn seconds(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref().map(|t| t.seconds)
}

/// Every page, one JSON line per replacement on stdout (the URL is the point
/// of the command), one line per link not reissued on stderr.
pub async fn reissue(conn: &Conn, args: ReissueArgs) -> anyhow::Result<()> {
    let mut client = client(conn).await?;
    let mut page_token = String::new();
    loop {
        let page = client
            .reissue_links(proto::ReissueLinksRequest {
                revocation_id: args.revocation_id.clone(),
                page_size: 0,
                page_token,
                caller: args.caller.clone().unwrap_or_default(),
            })
            .await
            .map_err(crate::status_error)?
            .into_inner();
        for l in page.links {
            let link = l.link.unwrap_or_default();
            let headers: std::collections::BTreeMap<_, _> =
                l.headers.into_iter().map(|h| (h.name, h.value)).collect();
            let line = json!({
                "replaces_link_id": l.replaces_link_id, "link_id": link.id, "caller": link.caller,
                "key_id": link.key_id, "expires_at": seconds(&link.expires_at), "url": l.url,
                "headers": headers,
            });
            println!("{line}");
        }
        for s in page.skipped {
            let reason = proto::SkipReason::try_from(s.reason).map_or("?", |r| r.as_str_name());
            eprintln!("not reissued: {} {reason}: {}", s.link_id, s.message);
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}

/// Prints events as they come; when the stream ends (server shutdown,
/// connection lost, the server unavailable), reconnects and resumes after the
/// last sequence printed. A refusal (no credentials, not allowed, a cursor
/// retention pruned) ends the command with its error: retrying would only
/// repeat it, and a supervisor must see the exit code.
pub async fn watch(conn: &Conn, args: WatchArgs) -> anyhow::Result<()> {
    crate::bearer(conn)?;
    let mut after = args.after;
    loop {
        let ended = async {
            let mut client = client(conn).await.map_err(Interrupted::Lost)?;
            let mut events = client
                .watch_revocations(proto::WatchRevocationsRequest {
                    after_sequence: after,
                    caller: args.caller.clone().unwrap_or_default(),
                })
                .await
                .map_err(Interrupted::from)?
                .into_inner();
            while let Some(message) = events.message().await.map_err(Interrupted::from)? {
                let Some(e) = message.event else { continue };
                after = Some(e.sequence);
                if conn.json {
                    let line = json!({
                        "sequence": e.sequence, "revocation_id": e.revocation_id, "caller": e.caller,
                        "signer": e.signer, "key_id": e.key_id, "links": e.links,
                        "quarantined": e.quarantined, "earliest_expiry": seconds(&e.earliest_expiry),
                    });
                    println!("{line}");
                } else {
                    println!(
                        "{}  revocation {} killed {} link(s) of {} ({} quarantined); reissue: presignctl reissue {}",
                        e.sequence, e.revocation_id, e.links, e.caller, e.quarantined, e.revocation_id
                    );
                }
            }
            Ok::<(), Interrupted>(())
        }
        .await;
        match ended {
            Ok(()) => {}
            Err(Interrupted::Lost(e)) => {
                eprintln!("presignctl: watch interrupted ({e:#}); reconnecting")
            }
            Err(Interrupted::Refused(s)) => return Err(crate::status_error(s)),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Why a watch's stream ended.
enum Interrupted {
    /// The connection or the server went away: reconnect.
    Lost(anyhow::Error),
    /// The server refused the request: the same request would be refused again.
    Refused(tonic::Status),
}

impl From<tonic::Status> for Interrupted {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code::*;
        match s.code() {
            Unavailable | DeadlineExceeded | Aborted | Cancelled | Unknown | Internal
            | ResourceExhausted => Self::Lost(crate::status_error(s)),
            _ => Self::Refused(s),
        }
    }
}
