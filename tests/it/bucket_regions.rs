//! Each bucket's links are signed for its region. Detection (the aws
//! backend) against moto's S3, which answers HeadBucket with the region a
//! bucket was made in, and the configured map overriding it; the signing
//! against Garage, which refuses a signature for another region than its own.

use crate::helpers::*;
use presignd::proto::{self, Method, Verdict, verify_link_request::Link};
use sqlx::PgPool;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

/// The region in a presigned URL's credential scope.
fn signed_region(url: &str) -> String {
    let scope = url
        .split("X-Amz-Credential=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    scope.split("%2F").nth(2).unwrap().to_owned()
}

/// moto's S3, as an AWS client would use it.
async fn moto_s3(region: &str) -> aws_sdk_s3::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .endpoint_url(env("MOTO_URL"))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .load()
        .await;
    let s3 = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

/// A bucket made in moto in `region`.
pub async fn moto_bucket(region: &str) -> String {
    let name = format!("rg-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let mut req = moto_s3(region).await.create_bucket().bucket(&name);
    if region != "us-east-1" {
        req = req.create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(region.into())
                .build(),
        );
    }
    req.send().await.expect("moto creates the bucket");
    name
}

/// An IAM user for a fresh signer in moto; returns the signer's name.
pub async fn moto_signer() -> String {
    let signer = format!("aws-{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    crate::aws_backend::iam()
        .await
        .create_user()
        .user_name(format!("presignd-{signer}"))
        .send()
        .await
        .expect("moto creates the user");
    signer
}

/// The config of a presignd on the aws backend whose links point at moto.
pub fn aws_config(signer: &str, buckets: &[&str], extra: &[&str]) -> presignd::config::Config {
    let mut args = vec![
        "--backend=aws".to_owned(),
        format!("--aws-iam-endpoint={}", env("MOTO_URL")),
        format!("--signers={signer}"),
        format!("--s3-endpoint={}", env("MOTO_URL")),
        "--s3-region=us-east-1".to_owned(),
        format!("--buckets={}", buckets.join(",")),
    ];
    args.extend(extra.iter().map(|e| e.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    test_config(&args)
}

#[sqlx::test]
async fn on_aws_each_bucket_is_signed_for_the_region_head_bucket_names(pool: PgPool) {
    let (paris, sydney) = (
        moto_bucket("eu-west-3").await,
        moto_bucket("ap-southeast-2").await,
    );
    let signer = moto_signer().await;
    let config = aws_config(&signer, &[&paris, &sydney], &[]);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(ServingStatus::Serving).await;

    for (bucket, region) in [(&paris, "eu-west-3"), (&sydney, "ap-southeast-2")] {
        let link = app
            .issue(link_request(bucket, "it/r", Method::Get, 600))
            .await
            .unwrap_or_else(|s| panic!("{bucket}: {s:?}"));
        assert_eq!(signed_region(&link.url), region, "{bucket}");
    }

    // The configured map wins over detection.
    drop(app);
    let config = aws_config(
        &signer,
        &[&paris, &sydney],
        &[&format!("--bucket-regions={sydney}=us-west-1")],
    );
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(ServingStatus::Serving).await;
    let link = app
        .issue(link_request(&sydney, "it/r", Method::Get, 600))
        .await
        .unwrap();
    assert_eq!(signed_region(&link.url), "us-west-1");
    let link = app
        .issue(link_request(&paris, "it/r", Method::Get, 600))
        .await
        .unwrap();
    assert_eq!(signed_region(&link.url), "eu-west-3");
}

#[sqlx::test]
async fn a_bucket_mapped_to_garage_s_region_serves_and_one_mapped_elsewhere_is_refused(
    pool: PgPool,
) {
    let (b0, b1) = (buckets()[0].clone(), buckets()[1].clone());
    // A link for b1 issued while b1 was signed for Garage's region.
    let mut before = spawn_app(&pool).await;
    let (key, _) = put_sample(&mut before, &b1).await;
    let earlier = before
        .issue(link_request(&b1, &key, Method::Get, 600))
        .await
        .unwrap();

    let config = test_config(&[&format!(
        "--bucket-regions={b0}={},{b1}=us-west-2",
        env("GARAGE_REGION")
    )]);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(ServingStatus::Serving).await;

    let (key, put) = put_sample(&mut app, &b0).await;
    assert_eq!(signed_region(&put.url), env("GARAGE_REGION"));
    let get = app
        .issue(link_request(&b0, &key, Method::Get, 600))
        .await
        .unwrap();
    let r = send(&app.http, reqwest::Method::GET, &get, None).await;
    assert_eq!(
        r.status(),
        200,
        "Garage serves the bucket mapped to its region"
    );

    // Signed for us-west-2, Garage would refuse it: no link.
    let s = app
        .issue(link_request(&b1, "it/r", Method::Get, 600))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    let details = s.get_error_details();
    let info = details.error_info().unwrap();
    assert_eq!(info.metadata["bucket"], b1);
    assert!(
        info.metadata["cause"].contains("region mismatch: signed for us-west-2")
            && info.metadata["cause"].contains(&format!("/{}/", env("GARAGE_REGION"))),
        "{:?}",
        info.metadata
    );

    // The earlier link, probed as this server signs for b1: the store names
    // its own region.
    let r = app
        .links
        .verify_link(proto::VerifyLinkRequest {
            link: Some(Link::LinkId(earlier.link.unwrap().id)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            Verdict::try_from(r.verdict).unwrap(),
            r.expected_region.as_str()
        ),
        (Verdict::RegionMismatch, env("GARAGE_REGION").as_str()),
        "{r:?}"
    );
}

/// A bucket that moved (deleted, made again in another region) keeps its
/// cached region until a refresh, which is what the preflight asks for when
/// the store answers AuthorizationHeaderMalformed, reads it again.
#[tokio::test]
async fn a_detected_region_is_cached_and_read_again_on_refresh() {
    let bucket = moto_bucket("eu-west-3").await;
    let target = presignd::signing::S3Target {
        endpoint: env("MOTO_URL"),
        region: "us-east-1".into(),
        path_style: true,
    };
    let regions = presignd::keys::Regions::new(&target, Default::default(), true);
    let http = reqwest::Client::new();
    let resolve = |refresh| regions.resolve(&http, &bucket, refresh);
    assert_eq!(&*resolve(false).await.unwrap(), "eu-west-3");

    moto_s3("eu-west-3")
        .await
        .delete_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("moto deletes the bucket");
    moto_s3("ap-southeast-2")
        .await
        .create_bucket()
        .bucket(&bucket)
        .create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint("ap-southeast-2".into())
                .build(),
        )
        .send()
        .await
        .expect("moto makes the bucket again in another region");

    assert_eq!(
        &*resolve(false).await.unwrap(),
        "eu-west-3",
        "cached: no HeadBucket per link"
    );
    assert_eq!(&*resolve(true).await.unwrap(), "ap-southeast-2");
    assert_eq!(&*regions.region_of(&bucket), "ap-southeast-2");
}
