//! presignd from Rust (tonic, with the crate's generated types): issue a PUT
//! link and upload through it, issue a GET link and download the bytes back,
//! then list my links.
//!
//! ```sh
//! PRESIGND_TOKEN=... cargo run --example client
//! ```
//!
//! Environment: `PRESIGND_TOKEN` (required: the caller's bearer token),
//! `PRESIGND_ENDPOINT` (default `http://127.0.0.1:50051`), `PRESIGND_BUCKET`
//! (default `presignd-dev`), `PRESIGND_OBJECT_KEY` (default
//! `examples/rust-<random>.txt`). Like presignd itself, it never prints a URL:
//! a presigned URL is a bearer credential.

use anyhow::{Context, bail};
use presignd::proto::{
    IssueLinkRequest, IssueLinkResponse, LinkFilter, LinkState, ListLinksRequest, Method,
    link_service_client::LinkServiceClient,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Sends the request the link was signed for: its method, the headers the reply
/// listed (exactly as given), the body.
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    link: &IssueLinkResponse,
    body: Option<&'static [u8]>,
) -> anyhow::Result<(reqwest::StatusCode, Vec<u8>)> {
    let mut request = http.request(method, &link.url);
    for h in &link.headers {
        request = request.header(&h.name, &h.value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.context("the store did not answer")?;
    Ok((response.status(), response.bytes().await?.to_vec()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let token = std::env::var("PRESIGND_TOKEN")
        .context("PRESIGND_TOKEN is not set: the caller's bearer token")?;
    let endpoint = env_or("PRESIGND_ENDPOINT", "http://127.0.0.1:50051");
    let bucket = env_or("PRESIGND_BUCKET", "presignd-dev");
    let key = env_or(
        "PRESIGND_OBJECT_KEY",
        &format!("examples/rust-{}.txt", uuid::Uuid::now_v7()),
    );
    const BODY: &[u8] = b"hello from the presignd Rust example\n";

    let channel = Channel::from_shared(endpoint.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse()?;
    let mut links =
        LinkServiceClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        });
    let http = reqwest::Client::new();

    // 1. A PUT link, bound to a content type: the upload must send it.
    let put = links
        .issue_link(IssueLinkRequest {
            bucket: bucket.clone(),
            object_key: key.clone(),
            method: Method::Put.into(),
            ttl: Some(prost_types::Duration {
                seconds: 300,
                nanos: 0,
            }),
            content_type: "text/plain".into(),
            labels: [("example".to_owned(), "rust".to_owned())].into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let link = put.link.as_ref().context("IssueLink answered no link")?;
    let expires = link.expires_at.context("a link without expires_at")?;
    println!(
        "issued PUT link {} key_id={} expires_at={expires}",
        link.id, link.key_id
    );
    let (status, _) = send(&http, reqwest::Method::PUT, &put, Some(BODY)).await?;
    println!(
        "uploaded {} bytes to {bucket}/{key}: HTTP {}",
        BODY.len(),
        status.as_u16()
    );
    if !status.is_success() {
        bail!("the upload failed: HTTP {status}");
    }

    // 2. A GET link for the same object: the store serves the bytes back.
    let get = links
        .issue_link(IssueLinkRequest {
            bucket: bucket.clone(),
            object_key: key.clone(),
            method: Method::Get.into(),
            ttl: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "issued GET link {}",
        get.link.as_ref().map_or("?", |l| &l.id)
    );
    let (status, got) = send(&http, reqwest::Method::GET, &get, None).await?;
    println!(
        "downloaded {} bytes: HTTP {}, same bytes: {}",
        got.len(),
        status.as_u16(),
        got == BODY
    );
    if !status.is_success() || got != BODY {
        bail!("the download did not return the uploaded bytes");
    }

    // 3. My links in this bucket, newest first, page by page.
    let mut request = ListLinksRequest {
        filter: Some(LinkFilter {
            bucket: bucket.clone(),
            ..Default::default()
        }),
        page_size: 100,
        page_token: String::new(),
    };
    let mut mine = Vec::new();
    loop {
        let page = links.list_links(request.clone()).await?.into_inner();
        mine.extend(page.links);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    println!("my links in {bucket}: {}", mine.len());
    for link in mine {
        println!(
            "  {} {} {} {} caller={}",
            link.id,
            link.method().as_str_name(),
            link.object_key,
            LinkState::try_from(link.state).map_or("?", |s| s.as_str_name()),
            link.caller
        );
    }
    Ok(())
}
