//! `presignctl form`: ask for a browser upload form and print it, or post a
//! local file with it (multipart/form-data, as a browser would) and print
//! the store's answer. The fields hold a signature, a bearer credential like
//! `issue`'s URL: printed on stdout only, for the caller to use; `--upload`
//! prints none of it.

use super::{Conn, parse_label, status_error};
use anyhow::{Context, bail};
use presignd::proto;
use std::path::PathBuf;

#[derive(clap::Args)]
pub(crate) struct FormArgs {
    #[arg(long)]
    bucket: String,
    /// The one key the form uploads to.
    #[arg(long, conflicts_with = "prefix", required_unless_present = "prefix")]
    key: Option<String>,
    /// Any key starting with this (with --upload: the prefix plus the
    /// file's name).
    #[arg(long)]
    prefix: Option<String>,
    /// The smallest file accepted, in bytes.
    #[arg(long, default_value_t = 0)]
    min_bytes: u64,
    /// The largest file accepted, in bytes.
    #[arg(long)]
    max_bytes: u64,
    /// The exact Content-Type the upload must declare.
    #[arg(long, conflicts_with = "content_type_prefix")]
    content_type: Option<String>,
    /// A prefix of the Content-Type the upload must declare (e.g. image/).
    #[arg(long)]
    content_type_prefix: Option<String>,
    /// Seconds the form stays valid.
    #[arg(long, default_value_t = 900)]
    ttl: i64,
    /// Labels as KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Post FILE with the form and print the store's HTTP status (exit 1
    /// unless it is a success).
    #[arg(long, value_name = "FILE")]
    upload: Option<PathBuf>,
    /// With --upload and --content-type-prefix: the Content-Type to send.
    #[arg(long, requires = "upload")]
    upload_type: Option<String>,
}

pub(crate) async fn form(conn: &Conn, args: FormArgs) -> anyhow::Result<()> {
    let mut client = crate::links::client(conn).await?;
    let resp = client
        .issue_upload_form(proto::IssueUploadFormRequest {
            bucket: args.bucket,
            object_key: args.key.unwrap_or_default(),
            object_key_prefix: args.prefix.clone().unwrap_or_default(),
            content_length_range: Some(proto::ContentLengthRange {
                min: args.min_bytes,
                max: args.max_bytes,
            }),
            content_type: args.content_type.unwrap_or_default(),
            content_type_prefix: args.content_type_prefix.clone().unwrap_or_default(),
            ttl: Some(prost_types::Duration {
                seconds: args.ttl,
                nanos: 0,
            }),
            labels: args.labels.into_iter().collect(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let link_id = resp.link.as_ref().map_or("", |l| l.id.as_str()).to_owned();
    let Some(file) = args.upload else {
        print_form(conn.json, &link_id, &resp);
        return Ok(());
    };

    let bytes = tokio::fs::read(&file)
        .await
        .with_context(|| format!("reading {}", file.display()))?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upload".into());
    let mut multipart = reqwest::multipart::Form::new();
    let mut key = String::new();
    for f in &resp.fields {
        let value = match (f.name.as_str(), &args.prefix) {
            ("key", Some(prefix)) => format!("{prefix}{name}"),
            _ => f.value.clone(),
        };
        if f.name == "key" {
            key = value.clone();
        }
        multipart = multipart.text(f.name.clone(), value);
    }
    if args.content_type_prefix.is_some() {
        let Some(t) = args.upload_type else {
            bail!(
                "the form binds a Content-Type prefix: say which type to send with --upload-type"
            );
        };
        multipart = multipart.text("Content-Type", t);
    }
    // The file is the last part: the store reads the fields before it.
    multipart = multipart.part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name),
    );
    let answer = reqwest::Client::new()
        .post(&resp.url)
        .multipart(multipart)
        .send()
        .await
        .context("posting the form to the store")?;
    let status = answer.status();
    let body = answer.text().await.unwrap_or_default();
    if conn.json {
        let out = serde_json::json!({
            "status": status.as_u16(), "link_id": link_id, "key": key, "body": body,
        });
        println!("{out}");
    } else {
        println!("{} {key} (link {link_id})", status.as_u16());
        if !body.is_empty() {
            println!("{body}");
        }
    }
    if !status.is_success() {
        std::process::exit(1);
    }
    Ok(())
}

/// The form on stdout: its URL and fields (the signature among them).
fn print_form(json: bool, link_id: &str, resp: &proto::IssueUploadFormResponse) {
    if json {
        let fields: Vec<_> = resp
            .fields
            .iter()
            .map(|f| serde_json::json!({ "name": f.name, "value": f.value }))
            .collect();
        let out = serde_json::json!({ "url": resp.url, "link_id": link_id, "fields": fields });
        println!("{out}");
    } else {
        println!("POST {}", resp.url);
        for f in &resp.fields {
            println!("{}={}", f.name, f.value);
        }
    }
}
