//! ListAuditEvents: the request's paging and filter, and rows to proto.

use super::response;
use crate::domain::{CallerName, FieldError};
use crate::paging::{Cursor, Listing, PageRequest, PageTokens};
use crate::proto;
use crate::registry::audit::AuditRow;

/// The caller filter (`None`: every caller) and the page asked for.
pub fn page(
    tokens: &PageTokens,
    r: &proto::ListAuditEventsRequest,
) -> Result<(Option<String>, PageRequest), FieldError> {
    let caller = match r.caller.as_str() {
        "" => None,
        c => Some(CallerName::parse(c)?.to_string()),
    };
    let filter = serde_json::json!({ "caller": caller });
    let page = tokens.request(Listing::AuditEvents, &filter, r.page_size, &r.page_token)?;
    Ok((caller, page))
}

/// `rows` was fetched with `page.fetch_limit()`.
pub fn response(
    tokens: &PageTokens,
    page: &PageRequest,
    mut rows: Vec<AuditRow>,
) -> proto::ListAuditEventsResponse {
    let next_page_token = tokens
        .next_page(page, &mut rows, |r| Cursor { at: r.at, id: r.id })
        .unwrap_or_default();
    proto::ListAuditEventsResponse {
        events: rows
            .into_iter()
            .map(|r| proto::AuditEvent {
                id: r.id.to_string(),
                at: Some(response::timestamp(r.at)),
                caller: r.caller.unwrap_or_default(),
                peer: r.peer.unwrap_or_default(),
                rpc: r.rpc,
                target: r.target,
                code: r.code,
                message: r.message,
                count: u64::try_from(r.count).unwrap_or(1),
            })
            .collect(),
        next_page_token,
    }
}
