//! LinkService: IssueLink and the read side of the registry.

use super::{ApiError, convert};
use crate::auth::caller_of;
use crate::issuance::Issuer;
use crate::proto::{self, link_service_server::LinkService};
use tonic::{Request, Response, Status};

pub struct LinkApi {
    pub issuer: Issuer,
}

#[tonic::async_trait]
impl LinkService for LinkApi {
    async fn issue_link(
        &self,
        request: Request<proto::IssueLinkRequest>,
    ) -> Result<Response<proto::IssueLinkResponse>, Status> {
        let caller = caller_of(&request)?;
        self.issuer.admit(&caller).map_err(ApiError::from)?;
        let (spec, labels) = convert::link_request(request.get_ref()).map_err(ApiError::from)?;
        let issued = self
            .issuer
            .issue(&caller, spec, labels)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::IssueLinkResponse {
            link: Some(convert::link(issued.link)),
            url: issued.url,
            headers: issued
                .headers
                .into_iter()
                .map(|(name, value)| proto::Header { name, value })
                .collect(),
        }))
    }

    async fn get_link(
        &self,
        _: Request<proto::GetLinkRequest>,
    ) -> Result<Response<proto::Link>, Status> {
        Err(Status::unimplemented("GetLink is not implemented yet"))
    }

    async fn list_links(
        &self,
        _: Request<proto::ListLinksRequest>,
    ) -> Result<Response<proto::ListLinksResponse>, Status> {
        Err(Status::unimplemented("ListLinks is not implemented yet"))
    }

    async fn summarize_links(
        &self,
        _: Request<proto::SummarizeLinksRequest>,
    ) -> Result<Response<proto::SummarizeLinksResponse>, Status> {
        Err(Status::unimplemented(
            "SummarizeLinks is not implemented yet",
        ))
    }

    async fn lookup_link(
        &self,
        _: Request<proto::LookupLinkRequest>,
    ) -> Result<Response<proto::LookupLinkResponse>, Status> {
        Err(Status::unimplemented("LookupLink is not implemented yet"))
    }
}
