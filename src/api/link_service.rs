//! LinkService: IssueLink, IssueUploadForm and the read side of the registry.

use super::{request, response};
use crate::auth::caller_of;
use crate::dashboard::{Dashboard, Subject};
use crate::domain::{FieldError, PresignedUrl};
use crate::issuance::{Issuer, ReissueRequest};
use crate::keys::KeyManager;
use crate::proto::{self, link_service_server::LinkService};
use crate::revocation::Revocations;
use crate::telemetry::rpc;
use std::pin::Pin;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

pub struct LinkApi {
    pub issuer: Issuer,
    pub dashboard: Dashboard,
    /// VerifyLink's keys and HTTP client.
    pub keys: KeyManager,
    /// WatchRevocations' events.
    pub revocations: Revocations,
}

type EventStream =
    Pin<Box<dyn Stream<Item = Result<proto::WatchRevocationsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl LinkService for LinkApi {
    async fn issue_link(
        &self,
        request: Request<proto::IssueLinkRequest>,
    ) -> Result<Response<proto::IssueLinkResponse>, Status> {
        let caller = caller_of(&request)?;
        self.issuer.admit(&caller)?;
        let (spec, labels, request_id) = request::link_request(request.get_ref())?;
        let issued = self.issuer.issue(&caller, spec, labels, request_id).await?;
        rpc::note(&request, |n| n.link(issued.link.id));
        Ok(Response::new(proto::IssueLinkResponse {
            link: Some(response::link(issued.link)),
            url: issued.url,
            headers: issued
                .headers
                .into_iter()
                .map(|(name, value)| proto::Header { name, value })
                .collect(),
        }))
    }

    async fn issue_upload_form(
        &self,
        request: Request<proto::IssueUploadFormRequest>,
    ) -> Result<Response<proto::IssueUploadFormResponse>, Status> {
        let caller = caller_of(&request)?;
        self.issuer.admit(&caller)?;
        let (spec, labels) = request::form_request(request.get_ref())?;
        let issued = self.issuer.issue_form(&caller, spec, labels).await?;
        rpc::note(&request, |n| n.link(issued.link.id));
        Ok(Response::new(proto::IssueUploadFormResponse {
            link: Some(response::link(issued.link)),
            url: issued.form.url,
            fields: issued
                .form
                .fields
                .into_iter()
                .map(|(name, value)| proto::FormField { name, value })
                .collect(),
        }))
    }

    async fn reissue_links(
        &self,
        request: Request<proto::ReissueLinksRequest>,
    ) -> Result<Response<proto::ReissueLinksResponse>, Status> {
        let caller = caller_of(&request)?;
        // Each replacement is a link: IssueLink's quota, one token a page.
        self.issuer.admit(&caller)?;
        let r = request.into_inner();
        let req = ReissueRequest {
            revocation_id: request::uuid("revocation_id", &r.revocation_id)?,
            owner: request::optional_caller("caller", &r.caller)?,
            page_size: r.page_size,
            page_token: r.page_token,
        };
        let tokens = &self.dashboard.tokens;
        let reissued = self.issuer.reissue(&caller, req, tokens).await?;
        Ok(Response::new(response::reissued(reissued)))
    }

    type WatchRevocationsStream = EventStream;

    async fn watch_revocations(
        &self,
        request: Request<proto::WatchRevocationsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = caller_of(&request)?;
        self.dashboard.admit(&caller)?;
        let r = request.get_ref();
        let only = request::optional_caller("caller", &r.caller)?;
        let events = self
            .revocations
            .watch(&caller, only, r.after_sequence)
            .await?;
        let stream = ReceiverStream::new(events)
            .map(|e| e.map(response::revocation_event).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_link(
        &self,
        request: Request<proto::GetLinkRequest>,
    ) -> Result<Response<proto::Link>, Status> {
        let caller = caller_of(&request)?;
        self.dashboard.admit(&caller)?;
        let id = request::link_id(&request.get_ref().id)?;
        let link = self.dashboard.get(&caller, id).await?;
        Ok(Response::new(response::link(link)))
    }

    async fn list_links(
        &self,
        request: Request<proto::ListLinksRequest>,
    ) -> Result<Response<proto::ListLinksResponse>, Status> {
        let caller = caller_of(&request)?;
        self.dashboard.admit(&caller)?;
        let req = request.get_ref();
        let filter = request::link_filter(req.filter.as_ref())?;
        let page = self
            .dashboard
            .list(&caller, filter, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(proto::ListLinksResponse {
            links: page.links.into_iter().map(response::link).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn summarize_links(
        &self,
        request: Request<proto::SummarizeLinksRequest>,
    ) -> Result<Response<proto::SummarizeLinksResponse>, Status> {
        let caller = caller_of(&request)?;
        self.dashboard.admit(&caller)?;
        let req = request.get_ref();
        let filter = request::link_filter(req.filter.as_ref())?;
        let group_by = request::group_by(req.group_by)?;
        let groups = self.dashboard.summarize(&caller, filter, group_by).await?;
        Ok(Response::new(proto::SummarizeLinksResponse {
            groups: groups.into_iter().map(response::summary_group).collect(),
        }))
    }

    async fn lookup_link(
        &self,
        request: Request<proto::LookupLinkRequest>,
    ) -> Result<Response<proto::LookupLinkResponse>, Status> {
        let caller = caller_of(&request)?;
        self.dashboard.admit(&caller)?;
        // The URL is a bearer credential: parsed here, never logged.
        let url = PresignedUrl::parse(&request.get_ref().url)?;
        let found = self.dashboard.lookup(&caller, &url).await?;
        Ok(Response::new(proto::LookupLinkResponse {
            link: Some(response::link(found.link)),
            blast_radius: found.blast_radius.as_ref().map(response::blast_radius),
        }))
    }

    async fn verify_link(
        &self,
        request: Request<proto::VerifyLinkRequest>,
    ) -> Result<Response<proto::VerifyLinkResponse>, Status> {
        use proto::verify_link_request::Link;
        let caller = caller_of(&request)?;
        self.dashboard.admit(&caller)?;
        // The URL is a bearer credential: parsed here, never logged.
        let subject = match &request.get_ref().link {
            Some(Link::LinkId(id)) => Subject::Id(request::link_id_named(id, "link_id")?),
            Some(Link::Url(url)) => Subject::Url(url, PresignedUrl::parse(url)?),
            None => {
                let unset = FieldError::new("link", "set link_id or url, the link to verify");
                return Err(unset.into());
            }
        };
        let verified = self.dashboard.verify(&caller, &self.keys, subject).await?;
        Ok(Response::new(response::verification(verified)))
    }
}
