//! KeyService: for admins only (the security team). Plans and runs revocations.
//! Every call is audited, whatever its outcome (see `audited`).

use super::error::{ApiError, Refusal};
use super::{audit_events, request, response};
use crate::audit::{AuditEvent, Auditor};
use crate::auth::{Caller, caller_of};
use crate::dashboard::Dashboard;
use crate::domain::{FieldError, SignerName};
use crate::keys::KeyBudgets;
use crate::keys::KeyManager;
use crate::paging::{Cursor, Listing};
use crate::proto::{self, key_service_server::KeyService};
use crate::revocation::{PlanTarget, Revocations, RevokeKeyRequest, RotateRequest};
use sqlx::PgPool;
use std::future::Future;
use tonic::{Request, Response, Status};

pub struct KeyApi {
    /// The preflight's per-bucket outcomes (ListSigningKeys).
    pub keys: KeyManager,
    pub pool: PgPool,
    pub revocations: Revocations,
    pub audit: Auditor,
    /// The listings: read quota and read pool, like LinkService's reads.
    pub dashboard: Dashboard,
    /// The signers' blast-radius budgets (ListSigningKeys shows each key's share).
    pub budgets: KeyBudgets,
}

#[allow(clippy::result_large_err)]
fn admin_only<T>(req: &Request<T>) -> Result<crate::auth::Caller, Status> {
    let caller = caller_of(req)?;
    if !caller.admin {
        return Err(ApiError::PermissionDenied(
            Refusal::new(
                "ADMIN_ONLY",
                format!(
                    "KeyService is for admins; caller {} is not one (role admin in the policy, or PRESIGND_ADMINS)",
                    caller.name
                ),
            )
            .with("service", "presignd.v1.KeyService"),
        )
        .into());
    }
    Ok(caller)
}

impl KeyApi {
    /// Runs `call` for an admin (PERMISSION_DENIED otherwise) and records the
    /// call and its outcome in the audit trail.
    async fn audited<Req, Resp, F, Fut>(
        &self,
        rpc: &str,
        target: String,
        request: Request<Req>,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Caller, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let caller = caller_of(&request)?;
        let peer = request.remote_addr().map(|a| a.to_string());
        let event = |code, message| AuditEvent {
            caller: Some(caller.name.to_string()),
            peer,
            rpc: format!("presignd.v1.KeyService/{rpc}"),
            target,
            code,
            message,
        };
        let admin = match admin_only(&request) {
            Ok(admin) => admin,
            Err(denied) => {
                // A denial: aggregated with its repeats, like the others.
                self.audit
                    .record_denial(event(denied.code(), denied.message().to_owned()));
                return Err(denied);
            }
        };
        let result = call(admin, request).await;
        let (code, message) = match &result {
            Ok(_) => (tonic::Code::Ok, String::new()),
            Err(s) => (s.code(), s.message().to_owned()),
        };
        self.audit.record(event(code, message)).await;
        result
    }
}

fn signer_target(signer: &str) -> String {
    if signer.is_empty() {
        String::new()
    } else {
        format!("signer={signer}")
    }
}

/// The quarantined links in the audit event's target (ids are no secret).
fn quarantine_target(ids: &[String]) -> String {
    if ids.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = ids.iter().take(10).map(|s| s.as_str()).collect();
    let more = ids.len().saturating_sub(shown.len());
    let more = if more > 0 {
        format!(",+{more}")
    } else {
        String::new()
    };
    format!(" quarantine={}{more}", shown.join(","))
}

fn optional_signer(s: &str) -> Result<Option<SignerName>, FieldError> {
    if s.is_empty() {
        Ok(None)
    } else {
        SignerName::parse(s).map(Some)
    }
}

#[tonic::async_trait]
impl KeyService for KeyApi {
    async fn list_signing_keys(
        &self,
        request: Request<proto::ListSigningKeysRequest>,
    ) -> Result<Response<proto::ListSigningKeysResponse>, Status> {
        let target = signer_target(&request.get_ref().signer);
        self.audited(
            "ListSigningKeys",
            target,
            request,
            |caller, request| async move {
                self.dashboard.admit(&caller)?;
                let signer = optional_signer(&request.get_ref().signer)?;
                let (signers, keys) = self
                    .dashboard
                    .signing_keys(signer.as_ref().map(|s| s.as_str()))
                    .await?;
                Ok(Response::new(response::signers(
                    signers,
                    keys,
                    |id| self.keys.bucket_statuses(id),
                    &self.budgets,
                )))
            },
        )
        .await
    }

    async fn plan_revocation(
        &self,
        request: Request<proto::PlanRevocationRequest>,
    ) -> Result<Response<proto::BlastRadius>, Status> {
        use proto::plan_revocation_request::Target;
        let audit_target = match &request.get_ref().target {
            Some(Target::KeyId(k)) => format!("key={k}"),
            Some(Target::Signer(s)) => format!("signer={s}"),
            None => String::new(),
        };
        self.audited(
            "PlanRevocation",
            audit_target,
            request,
            |_, request| async move {
                let target = match &request.get_ref().target {
                    Some(Target::KeyId(k)) if !k.is_empty() => {
                        PlanTarget::Key(request::signing_key_id("key_id", k)?)
                    }
                    Some(Target::Signer(s)) => PlanTarget::Signer(SignerName::parse(s)?),
                    _ => {
                        return Err(FieldError::new("target", "set key_id or signer").into());
                    }
                };
                let radius = self.revocations.plan(target).await?;
                Ok(Response::new(response::blast_radius(&radius)))
            },
        )
        .await
    }

    async fn rotate_key(
        &self,
        request: Request<proto::RotateKeyRequest>,
    ) -> Result<Response<proto::Revocation>, Status> {
        let r = request.get_ref();
        let mode = proto::RotationMode::try_from(r.mode).map_or("?", |m| m.as_str_name());
        let target = format!(
            "signer={} mode={mode} dry_run={}{}",
            r.signer,
            r.dry_run,
            quarantine_target(&r.quarantine_link_ids)
        );
        self.audited("RotateKey", target, request, |caller, request| async move {
            let r = request.into_inner();
            let req = RotateRequest {
                signer: SignerName::parse(&r.signer)?,
                mode: request::rotation_mode(r.mode)?,
                reason: r.reason,
                expected_key_id: Some(r.expected_key_id).filter(|k| !k.is_empty()),
                dry_run: r.dry_run,
                requested_by: caller.name.to_string(),
                quarantine_link_ids: request::link_ids(
                    "quarantine_link_ids",
                    &r.quarantine_link_ids,
                )?,
            };
            let rotation = self.revocations.rotate(req, r.detach).await?;
            Ok(Response::new(response::rotation(rotation)))
        })
        .await
    }

    async fn revoke_key(
        &self,
        request: Request<proto::RevokeKeyRequest>,
    ) -> Result<Response<proto::Revocation>, Status> {
        let r = request.get_ref();
        let target = format!(
            "key={} dry_run={}{}",
            r.key_id,
            r.dry_run,
            quarantine_target(&r.quarantine_link_ids)
        );
        self.audited("RevokeKey", target, request, |caller, request| async move {
            let r = request.into_inner();
            let req = RevokeKeyRequest {
                key_id: request::signing_key_id("key_id", &r.key_id)?,
                reason: r.reason,
                dry_run: r.dry_run,
                requested_by: caller.name.to_string(),
                quarantine_link_ids: request::link_ids(
                    "quarantine_link_ids",
                    &r.quarantine_link_ids,
                )?,
            };
            let rotation = self.revocations.revoke_key(req, r.detach).await?;
            Ok(Response::new(response::rotation(rotation)))
        })
        .await
    }

    async fn cancel_revocation(
        &self,
        request: Request<proto::CancelRevocationRequest>,
    ) -> Result<Response<proto::CancelRevocationResponse>, Status> {
        let target = format!("revocation={}", request.get_ref().id);
        self.audited(
            "CancelRevocation",
            target,
            request,
            |caller, request| async move {
                let r = request.get_ref();
                let id = request::uuid("id", &r.id)?;
                let cancelled = self
                    .revocations
                    .cancel(id, &r.reason, caller.name.as_str())
                    .await?;
                Ok(Response::new(response::cancelled(cancelled)))
            },
        )
        .await
    }

    async fn get_revocation(
        &self,
        request: Request<proto::GetRevocationRequest>,
    ) -> Result<Response<proto::Revocation>, Status> {
        let target = format!("revocation={}", request.get_ref().id);
        self.audited("GetRevocation", target, request, |_, request| async move {
            let id = request::uuid("id", &request.get_ref().id)?;
            let row = self.revocations.get(id).await?;
            Ok(Response::new(response::revocation(row)))
        })
        .await
    }

    async fn list_revocations(
        &self,
        request: Request<proto::ListRevocationsRequest>,
    ) -> Result<Response<proto::ListRevocationsResponse>, Status> {
        let target = signer_target(&request.get_ref().signer);
        self.audited(
            "ListRevocations",
            target,
            request,
            |caller, request| async move {
                self.dashboard.admit(&caller)?;
                let r = request.get_ref();
                let signer = optional_signer(&r.signer)?;
                let signer = signer.as_ref().map(|s| s.as_str());
                let filter = serde_json::json!({ "signer": signer });
                let tokens = &self.dashboard.tokens;
                let page =
                    tokens.request(Listing::Revocations, &filter, r.page_size, &r.page_token)?;
                let mut rows = self
                    .dashboard
                    .revocations(signer, page.after, page.fetch_limit())
                    .await?;
                let next = tokens.next_page(&page, &mut rows, |r| Cursor {
                    at: r.created_at,
                    id: r.id,
                });
                Ok(Response::new(proto::ListRevocationsResponse {
                    revocations: rows.into_iter().map(response::revocation).collect(),
                    next_page_token: next.unwrap_or_default(),
                }))
            },
        )
        .await
    }

    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        let target = match request.get_ref().caller.as_str() {
            "" => String::new(),
            c => format!("caller={c}"),
        };
        self.audited(
            "ListAuditEvents",
            target,
            request,
            |caller, request| async move {
                self.dashboard.admit(&caller)?;
                let tokens = &self.dashboard.tokens;
                let (caller, page) = audit_events::page(tokens, request.get_ref())?;
                let rows = self
                    .dashboard
                    .audit_events(caller.as_deref(), page.after, page.fetch_limit())
                    .await?;
                Ok(Response::new(audit_events::response(tokens, &page, rows)))
            },
        )
        .await
    }
}
