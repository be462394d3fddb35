//! The region each bucket's links are signed for. A bucket named in
//! `--bucket-regions` gets that region, always. Otherwise, where detection is
//! on (the aws backend: an AWS bucket lives in one region, and a link signed
//! for another is refused with AuthorizationHeaderMalformed), the region
//! HeadBucket answers in `x-amz-bucket-region` (S3 sends it whatever the
//! status, to anyone), cached, and asked again when the store says a probe's
//! region is wrong. Otherwise the target's region (`--s3-region`: Garage has
//! one region).

use crate::signing::S3Target;
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Clone)]
pub struct Regions {
    default: Arc<str>,
    configured: Arc<HashMap<String, Arc<str>>>,
    detect: bool,
    detected: Arc<ArcSwap<HashMap<String, Arc<str>>>>,
    endpoint: String,
    path_style: bool,
}

impl Regions {
    pub fn new(target: &S3Target, configured: BTreeMap<String, String>, detect: bool) -> Self {
        Self {
            default: target.region.as_str().into(),
            configured: Arc::new(
                configured
                    .into_iter()
                    .map(|(b, r)| (b, Arc::from(r)))
                    .collect(),
            ),
            detect,
            detected: Arc::default(),
            endpoint: target.endpoint.trim_end_matches('/').to_owned(),
            path_style: target.path_style,
        }
    }

    /// Whether `--bucket-regions` names the bucket (then it is never detected).
    pub fn is_configured(&self, bucket: &str) -> bool {
        self.configured.contains_key(bucket)
    }

    /// The region known for `bucket` now, without asking the store: the
    /// configured one, the detected one, else the target's.
    pub fn region_of(&self, bucket: &str) -> Arc<str> {
        if let Some(r) = self.configured.get(bucket) {
            return r.clone();
        }
        if self.detect
            && let Some(r) = self.detected.load().get(bucket)
        {
            return r.clone();
        }
        self.default.clone()
    }

    /// The region to sign `bucket`'s links for, detecting it (again, with
    /// `refresh`) when detection is on and the bucket is not configured.
    pub async fn resolve(
        &self,
        http: &reqwest::Client,
        bucket: &str,
        refresh: bool,
    ) -> Result<Arc<str>, String> {
        if !self.detect || self.is_configured(bucket) {
            return Ok(self.region_of(bucket));
        }
        if !refresh && let Some(r) = self.detected.load().get(bucket) {
            return Ok(r.clone());
        }
        let region: Arc<str> = self.head_bucket(http, bucket).await?.into();
        let (bucket, stored) = (bucket.to_owned(), region.clone());
        self.detected.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(bucket.clone(), stored.clone());
            m
        });
        Ok(region)
    }

    /// HeadBucket, unsigned: the `x-amz-bucket-region` header of the answer.
    async fn head_bucket(&self, http: &reqwest::Client, bucket: &str) -> Result<String, String> {
        let url = self.bucket_url(bucket)?;
        let r = http
            .head(url)
            .send()
            .await
            .map_err(|e| format!("HeadBucket {bucket}: {}", e.without_url()))?;
        let status = r.status().as_u16();
        match r.headers().get("x-amz-bucket-region") {
            Some(v) => v
                .to_str()
                .map(str::to_owned)
                .map_err(|_| format!("HeadBucket {bucket}: an unreadable x-amz-bucket-region")),
            None if status == 404 => Err(format!(
                "bucket {bucket} does not exist (HeadBucket: HTTP 404)"
            )),
            None => Err(format!(
                "HeadBucket {bucket}: HTTP {status} without x-amz-bucket-region"
            )),
        }
    }

    fn bucket_url(&self, bucket: &str) -> Result<String, String> {
        if self.path_style {
            return Ok(format!("{}/{bucket}", self.endpoint));
        }
        let mut url = url::Url::parse(&self.endpoint)
            .map_err(|e| format!("S3 endpoint {:?}: {e}", self.endpoint))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        url.set_host(Some(&format!("{bucket}.{host}")))
            .map_err(|e| format!("bucket {bucket} as a host name: {e}"))?;
        Ok(url.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions(detect: bool) -> Regions {
        Regions::new(
            &S3Target {
                endpoint: "https://s3.example.com/".into(),
                region: "us-east-1".into(),
                path_style: false,
            },
            BTreeMap::from([("pinned".to_owned(), "eu-west-3".to_owned())]),
            detect,
        )
    }

    #[test]
    fn a_configured_region_wins_and_others_fall_back_to_the_target_s() {
        let r = regions(true);
        assert_eq!(&*r.region_of("pinned"), "eu-west-3");
        assert_eq!(&*r.region_of("other"), "us-east-1");
        assert!(r.is_configured("pinned") && !r.is_configured("other"));
    }

    #[test]
    fn head_bucket_goes_to_the_bucket_s_own_host_or_path() {
        assert_eq!(
            regions(true).bucket_url("photos").unwrap(),
            "https://photos.s3.example.com/"
        );
        let mut path = regions(true);
        path.path_style = true;
        assert_eq!(
            path.bucket_url("photos").unwrap(),
            "https://s3.example.com/photos"
        );
    }
}
