//! `presignctl upload`: a local file up through a multipart upload, for
//! trying things by hand. StartMultipartUpload (the file's size, cut into
//! parts by presignd), a PUT of each part through its URL, then
//! CompleteMultipartUpload; a part the store refuses aborts the upload.
//! Prints the upload id and the SHA-256 of the bytes sent, never a URL.

use crate::Conn;
use crate::links::client;
use clap::Args;
use presignd::proto;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// The answer to 10,000 parts is about 5 MB: above tonic's 4 MiB default.
const MAX_ANSWER_BYTES: usize = 64 << 20;

#[derive(Args)]
pub struct UploadArgs {
    /// The local file to upload.
    file: PathBuf,
    #[arg(long)]
    bucket: String,
    /// The object key.
    #[arg(long)]
    key: String,
    /// Bytes per part but the last (5 MiB to 5 GiB); default: presignd's
    /// (8 MiB, more for files over 80,000 MiB). Each part is read into memory.
    #[arg(long, default_value_t = 0)]
    part_size: u64,
    /// Seconds the part URLs stay valid.
    #[arg(long, default_value_t = 3600)]
    ttl: i64,
    /// The object's Content-Type.
    #[arg(long)]
    content_type: Option<String>,
}

pub async fn upload(conn: &Conn, args: UploadArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut file = std::fs::File::open(&args.file)
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    let size = file.metadata()?.len();
    let mut client = client(conn)
        .await?
        .max_decoding_message_size(MAX_ANSWER_BYTES);
    let started = client
        .start_multipart_upload(proto::StartMultipartUploadRequest {
            bucket: args.bucket,
            object_key: args.key,
            size: Some(proto::start_multipart_upload_request::Size::TotalSize(size)),
            part_size: args.part_size,
            content_type: args.content_type.unwrap_or_default(),
            ttl: Some(prost_types::Duration {
                seconds: args.ttl,
                nanos: 0,
            }),
            labels: Default::default(),
        })
        .await
        .map_err(crate::status_error)?
        .into_inner();
    let http = reqwest::Client::new();
    let mut sha = Sha256::new();
    let mut parts = Vec::with_capacity(started.parts.len());
    for part in &started.parts {
        let sent = async {
            let mut bytes = vec![0; usize::try_from(part.size)?];
            file.seek(SeekFrom::Start(part.offset))?;
            file.read_exact(&mut bytes)?;
            sha.update(&bytes);
            let r =
                http.put(&part.url).body(bytes).send().await.map_err(|e| {
                    anyhow::anyhow!("part {}: {}", part.part_number, e.without_url())
                })?;
            let status = r.status();
            let etag = r
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match (status.is_success(), etag) {
                (true, Some(etag)) => Ok(etag),
                _ => {
                    let body = r.text().await.unwrap_or_default();
                    let code = presignd::signing::xml_field(&body, "Code").unwrap_or("no code");
                    anyhow::bail!(
                        "part {}: the store answered {status} ({code})",
                        part.part_number
                    )
                }
            }
        }
        .await;
        match sent {
            Ok(etag) => parts.push(proto::CompletedPart {
                part_number: part.part_number,
                etag,
            }),
            Err(e) => {
                let aborted = client
                    .abort_multipart_upload(proto::AbortMultipartUploadRequest {
                        upload_id: started.upload_id.clone(),
                    })
                    .await;
                let then = match aborted {
                    Ok(_) => "upload aborted".to_owned(),
                    Err(s) => format!("abort failed too: {}", crate::status_error(s)),
                };
                return Err(e.context(format!("upload {} ({then})", started.upload_id)));
            }
        }
    }
    let completed = client
        .complete_multipart_upload(proto::CompleteMultipartUploadRequest {
            upload_id: started.upload_id.clone(),
            parts,
        })
        .await
        .map_err(crate::status_error)?
        .into_inner();
    let sha256 = hex::encode(sha.finalize());
    if conn.json {
        let out = json!({
            "upload_id": started.upload_id, "sha256": sha256, "bytes": size,
            "parts": started.parts.len(), "etag": completed.etag, "key_id": completed.key_id,
        });
        println!("{out}");
    } else {
        println!("upload_id {}", started.upload_id);
        println!("sha256 {sha256}");
        println!("bytes {size} in {} parts", started.parts.len());
    }
    Ok(())
}
