//! ListAuditEvents: the request's paging and filter, and rows to proto.

use super::{request, response};
use crate::domain::{CallerName, FieldError};
use crate::proto;
use crate::registry::audit::AuditRow;
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub struct Page {
    pub caller: Option<String>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

pub fn page(r: &proto::ListAuditEventsRequest) -> Result<Page, FieldError> {
    let caller = match r.caller.as_str() {
        "" => None,
        c => Some(CallerName::parse(c)?.to_string()),
    };
    Ok(Page {
        caller,
        // Same opaque (time, id) token as ListRevocations.
        after: request::time_id_cursor(&r.page_token)?,
        limit: request::page_size(r.page_size)?,
    })
}

/// `rows` was fetched with `limit + 1`: the extra row says there is a next page.
pub fn response(mut rows: Vec<AuditRow>, limit: i64) -> proto::ListAuditEventsResponse {
    let next_page_token = response::next_page(&mut rows, limit, |r| (r.at, r.id));
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
