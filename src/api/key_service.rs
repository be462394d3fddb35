//! KeyService: for admins only (the security team). Plans and runs revocations.

use super::{ApiError, convert};
use crate::auth::caller_of;
use crate::domain::{FieldError, SignerName};
use crate::keys::KeyManager;
use crate::proto::{self, key_service_server::KeyService};
use crate::revocation::{self, Mode, PlanTarget, RotateRequest};
use tonic::{Request, Response, Status};

pub struct KeyApi {
    pub keys: KeyManager,
}

#[allow(clippy::result_large_err)]
fn admin_only<T>(req: &Request<T>) -> Result<crate::auth::Caller, Status> {
    let caller = caller_of(req)?;
    if !caller.admin {
        return Err(Status::permission_denied(format!(
            "KeyService is for admins; caller {} is not one (see PRESIGND_ADMINS)",
            caller.name
        )));
    }
    Ok(caller)
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
        admin_only(&request)?;
        let signer = optional_signer(&request.get_ref().signer).map_err(ApiError::from)?;
        let (signers, keys) = self
            .keys
            .list_keys(signer.as_ref().map(|s| s.as_str()))
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::signers(signers, keys)))
    }

    async fn plan_revocation(
        &self,
        request: Request<proto::PlanRevocationRequest>,
    ) -> Result<Response<proto::BlastRadius>, Status> {
        admin_only(&request)?;
        use proto::plan_revocation_request::Target;
        let target = match &request.get_ref().target {
            Some(Target::KeyId(k)) if !k.is_empty() => PlanTarget::Key(k.clone()),
            Some(Target::Signer(s)) => {
                PlanTarget::Signer(SignerName::parse(s).map_err(ApiError::from)?)
            }
            _ => {
                return Err(
                    ApiError::from(FieldError::new("target", "set key_id or signer")).into(),
                );
            }
        };
        let radius = revocation::plan(&self.keys, target)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::blast_radius(&radius)))
    }

    async fn rotate_key(
        &self,
        request: Request<proto::RotateKeyRequest>,
    ) -> Result<Response<proto::Revocation>, Status> {
        let caller = admin_only(&request)?;
        let r = request.into_inner();
        let req = RotateRequest {
            signer: SignerName::parse(&r.signer).map_err(ApiError::from)?,
            mode: Mode::from_proto(r.mode).map_err(ApiError::from)?,
            reason: r.reason,
            expected_key_id: Some(r.expected_key_id).filter(|k| !k.is_empty()),
            dry_run: r.dry_run,
            requested_by: caller.name.to_string(),
        };
        let rotation = revocation::rotate(&self.keys, req)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::rotation(rotation)))
    }

    async fn get_revocation(
        &self,
        request: Request<proto::GetRevocationRequest>,
    ) -> Result<Response<proto::Revocation>, Status> {
        admin_only(&request)?;
        let id = convert::uuid("id", &request.get_ref().id).map_err(ApiError::from)?;
        let row = revocation::get(&self.keys, id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::revocation(row)))
    }

    async fn list_revocations(
        &self,
        request: Request<proto::ListRevocationsRequest>,
    ) -> Result<Response<proto::ListRevocationsResponse>, Status> {
        admin_only(&request)?;
        let r = request.get_ref();
        let signer = optional_signer(&r.signer).map_err(ApiError::from)?;
        let limit = convert::page_size(r.page_size).map_err(ApiError::from)?;
        let after = convert::revocation_cursor(&r.page_token).map_err(ApiError::from)?;
        let mut rows = revocation::list(
            &self.keys,
            signer.as_ref().map(|s| s.as_str()),
            after,
            limit + 1,
        )
        .await
        .map_err(ApiError::from)?;
        let next = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last()
                .map(|r| convert::revocation_token(r.created_at, r.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(proto::ListRevocationsResponse {
            revocations: rows.into_iter().map(convert::revocation).collect(),
            next_page_token: next,
        }))
    }
}
