//! ns per presigned URL, side by side (docs/BENCHMARKS.md, "Presigning"):
//!
//! * `sdk`: aws-sdk-s3's presigner (what IssueLink used before), a GET with
//!   response-content-disposition;
//! * `aws_sigv4`: the aws-sigv4 crate alone on the same request (the whole HMAC
//!   key chain per URL, as the SDK does), URL included;
//! * `ours`: `SigningKey::presign` (src/signing/sigv4.rs), URL included;
//! * `ours_two_threads`: the same on two threads at once, one key (an
//!   iteration is a URL on each);
//! * `floor`: one SHA-256 of a canonical request of the same size and one HMAC
//!   of the string to sign with an already keyed HMAC: the hashes alone.
//!
//!   cargo bench --bench presign
//!
//! Before measuring, it checks that the three signers give the same URL.

use aws_credential_types::Credentials;
use aws_sdk_s3::config::{BehaviorVersion, Region, RequestChecksumCalculation};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sigv4::http_request::{
    PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use criterion::{Criterion, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use presignd::domain::{Bucket, ContentDisposition, LinkSpec, Method, ObjectKey, Ttl};
use presignd::secret::SecretString;
use presignd::signing::{S3Target, SigningKey};
use sha2::{Digest, Sha256};
use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ENDPOINT: &str = "http://127.0.0.1:3900";
const REGION: &str = "garage";
const ACCESS_KEY: &str = "GK31c2f218a2e44f485b94239e";
const SECRET: &str = "b892c0665f0ada8a4755dae98baa3b133590e11dae3bcc1f4d769d67f16c3835";
const BUCKET: &str = "uploads";
const KEY: &str = "team-a/2026/11/30/report final (v2).pdf";
const DISPOSITION: &str = "attachment; filename=\"report.pdf\"";
const TTL: u64 = 900;

fn time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_000_000)
}

fn spec() -> LinkSpec {
    LinkSpec {
        method: Method::Get,
        bucket: Bucket::parse(BUCKET).unwrap(),
        object_key: ObjectKey::parse(KEY).unwrap(),
        ttl: Ttl::from_secs(TTL).unwrap(),
        content_type: None,
        content_disposition: Some(ContentDisposition::parse(DISPOSITION).unwrap()),
    }
}

fn sdk_client() -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(ENDPOINT)
        .force_path_style(true)
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET, None, None, "bench"))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

async fn sdk_presign(client: &aws_sdk_s3::Client) -> String {
    let config = PresigningConfig::builder()
        .start_time(time())
        .expires_in(Duration::from_secs(TTL))
        .build()
        .unwrap();
    client
        .get_object()
        .bucket(BUCKET)
        .key(KEY)
        .response_content_disposition(DISPOSITION)
        .presigned(config)
        .await
        .unwrap()
        .uri()
        .to_owned()
}

/// The URL the operation would be sent to, before signing.
fn unsigned_url() -> String {
    let enc = |s: &str, keep_slash: bool| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                b'/' if keep_slash => "/".into(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    format!(
        "{ENDPOINT}/{BUCKET}/{}?x-id=GetObject&response-content-disposition={}",
        enc(KEY, true),
        enc(DISPOSITION, false)
    )
}

fn aws_sigv4_presign(identity: &Identity, url: &str) -> String {
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(TTL));
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    let params = v4::SigningParams::builder()
        .identity(identity)
        .region(REGION)
        .name("s3")
        .time(time())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "GET",
        url,
        std::iter::empty(),
        SignableBody::UnsignedPayload,
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut request = http::Request::builder().uri(url).body(()).unwrap();
    instructions.apply_to_request_http1x(&mut request);
    request.uri().to_string()
}

/// A canonical request of the size ours hashes for this link, and the
/// already-keyed HMAC of the day.
fn floor_inputs(url: &str) -> (String, Hmac<Sha256>) {
    let (path, query) = url[ENDPOINT.len()..].split_once('?').unwrap();
    let query = query.split("&X-Amz-Signature").next().unwrap();
    let creq = format!("GET\n{path}\n{query}\nhost:127.0.0.1:3900\n\nhost\nUNSIGNED-PAYLOAD");
    let mac = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap();
    (creq, mac)
}

fn floor(creq: &str, mac: &Hmac<Sha256>) -> [u8; 32] {
    let digest = Sha256::digest(creq.as_bytes());
    let mut m = mac.clone();
    m.update(b"AWS4-HMAC-SHA256\n20261126T065320Z\n20261126/garage/s3/aws4_request\n");
    let mut hex = [0u8; 64];
    for (i, b) in digest.iter().enumerate() {
        hex[2 * i] = b"0123456789abcdef"[(b >> 4) as usize];
        hex[2 * i + 1] = b"0123456789abcdef"[(b & 15) as usize];
    }
    m.update(&hex);
    m.finalize().into_bytes().into()
}

fn presign(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let client = sdk_client();
    let identity: Identity = Credentials::new(ACCESS_KEY, SECRET, None, None, "bench").into();
    let ours = SigningKey::new(
        &S3Target {
            endpoint: ENDPOINT.into(),
            region: REGION.into(),
            path_style: true,
        },
        ACCESS_KEY,
        &SecretString::new(SECRET.into()),
        "bench",
    );
    let spec = spec();
    let url = unsigned_url();

    // The three give one URL.
    let reference = rt.block_on(sdk_presign(&client));
    assert_eq!(aws_sigv4_presign(&identity, &url), reference);
    assert_eq!(ours.presign(&spec, time()).unwrap().url, reference);
    let (creq, mac) = floor_inputs(&reference);

    let mut g = c.benchmark_group("presign_get_url");
    g.bench_function("sdk", |b| {
        b.iter(|| rt.block_on(sdk_presign(black_box(&client))))
    });
    g.bench_function("aws_sigv4", |b| {
        b.iter(|| aws_sigv4_presign(black_box(&identity), black_box(&url)))
    });
    g.bench_function("ours", |b| {
        b.iter(|| ours.presign(black_box(&spec), black_box(time())).unwrap())
    });
    // Two threads signing with the one key at once, as the server's runtime
    // threads do: one iteration is a URL on each, so it shows what the
    // signer's shared state (the cached day keys) costs when both use it.
    g.bench_function("ours_two_threads", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..iters {
                            black_box(ours.presign(black_box(&spec), black_box(time())).unwrap());
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.bench_function("floor", |b| {
        b.iter(|| floor(black_box(&creq), black_box(&mac)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = presign
}
criterion_main!(benches);
