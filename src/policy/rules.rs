//! One caller's rules and the check of a link request against them. Object keys
//! are compared literally with the allowed prefixes (S3 does no path
//! normalization), and under a prefix rule a key with a '.' or '..' segment is
//! refused outright: something between the link and the store might normalize
//! `team-a/../team-b/x` into `team-b/x`.

use crate::domain::{Bucket, CallerName, Method, SignerName, Ttl};
use crate::domain::{FormSpec, KeyCondition, LinkSpec};
use std::num::NonZeroU32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Caller,
}

/// A token bucket: `per_sec` links a second on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    pub per_sec: NonZeroU32,
    pub burst: NonZeroU32,
}

impl RateSpec {
    /// None when `per_sec` is 0 (no limit); a burst of 0 means `per_sec`.
    pub fn new(per_sec: u32, burst: u32) -> Option<Self> {
        let per_sec = NonZeroU32::new(per_sec)?;
        Some(Self {
            per_sec,
            burst: NonZeroU32::new(burst).unwrap_or(per_sec),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Rules {
    pub role: Role,
    pub signer: SignerName,
    /// None: any bucket.
    pub buckets: Option<Vec<Bucket>>,
    /// None: any object key.
    pub prefixes: Option<Vec<String>>,
    pub methods: Vec<Method>,
    pub max_ttl: Ttl,
    /// The largest file an upload form may accept (its content-length
    /// range's max); None: S3's limit of one upload.
    pub max_upload_bytes: Option<u64>,
    pub rate: Option<RateSpec>,
    /// Exact certificate names (URI/DNS SAN or CN) that identify this caller.
    pub cert_names: Vec<String>,
}

/// A request the policy refuses: `rule` names the setting that refused it
/// (`buckets`, `prefixes`, `methods`, `max_ttl_secs`, `max_upload_bytes`, or
/// `entry` when the caller has none), and the message says how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy: {message}")]
pub struct Denied {
    pub rule: &'static str,
    pub message: String,
}

impl Denied {
    pub fn new(rule: &'static str, message: impl Into<String>) -> Self {
        Self {
            rule,
            message: message.into(),
        }
    }
}

/// What the policy allows for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub signer: SignerName,
}

/// Whether a key has a '.' or '..' segment (split on '/' and '\', with '%2e'
/// read as '.'), the shapes a normalizing proxy would resolve.
pub fn key_has_dot_segment(key: &str) -> bool {
    key.split(['/', '\\']).any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

fn shown(s: &str) -> String {
    if s.chars().count() > 80 {
        format!("{:?}…", s.chars().take(80).collect::<String>())
    } else {
        format!("{s:?}")
    }
}

fn list<T: AsRef<str>>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.as_ref().to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

impl AsRef<str> for Bucket {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Rules {
    pub fn authorize(&self, caller: &CallerName, spec: &LinkSpec) -> Result<Grant, Denied> {
        self.check_bucket(caller, &spec.bucket)?;
        self.check_key(caller, spec.object_key.as_str(), "object key")?;
        self.check_method(caller, spec.method)?;
        self.check_ttl(caller, spec.ttl)?;
        Ok(Grant {
            signer: self.signer.clone(),
        })
    }

    /// An upload form: the rules of a link (its method is POST; a key prefix
    /// must lie inside an allowed prefix, so every key it allows does), and
    /// its largest file within `max_upload_bytes`.
    pub fn authorize_form(&self, caller: &CallerName, spec: &FormSpec) -> Result<Grant, Denied> {
        self.check_bucket(caller, &spec.bucket)?;
        let what = match spec.key {
            KeyCondition::Exact(_) => "object key",
            KeyCondition::Prefix(_) => "key prefix",
        };
        self.check_key(caller, spec.key.as_str(), what)?;
        self.check_method(caller, Method::Post)?;
        self.check_ttl(caller, spec.ttl)?;
        if let Some(max) = self.max_upload_bytes
            && spec.size.max > max
        {
            return Err(Denied::new(
                "max_upload_bytes",
                format!(
                    "caller {caller} may not accept uploads of {} bytes (max_upload_bytes: {max})",
                    spec.size.max
                ),
            ));
        }
        Ok(Grant {
            signer: self.signer.clone(),
        })
    }

    fn check_bucket(&self, caller: &CallerName, bucket: &Bucket) -> Result<(), Denied> {
        match &self.buckets {
            Some(buckets) if !buckets.contains(bucket) => Err(Denied::new(
                "buckets",
                format!(
                    "caller {caller} may not use bucket {bucket} (allowed: {})",
                    list(buckets)
                ),
            )),
            _ => Ok(()),
        }
    }

    /// `key` (an object key, or a form's key prefix: `what` says which) must
    /// start with an allowed prefix and have no dot segment.
    fn check_key(&self, caller: &CallerName, key: &str, what: &str) -> Result<(), Denied> {
        let Some(prefixes) = &self.prefixes else {
            return Ok(());
        };
        if !prefixes.iter().any(|p| key.starts_with(p.as_str())) {
            return Err(Denied::new(
                "prefixes",
                format!(
                    "caller {caller} may not use {what} {} (allowed prefixes: {})",
                    shown(key),
                    list(prefixes)
                ),
            ));
        }
        if key_has_dot_segment(key) {
            return Err(Denied::new(
                "prefixes",
                format!(
                    "caller {caller} may not use {what} {}: '.' and '..' path segments are refused under a prefix rule",
                    shown(key)
                ),
            ));
        }
        Ok(())
    }

    fn check_method(&self, caller: &CallerName, method: Method) -> Result<(), Denied> {
        if self.methods.contains(&method) {
            return Ok(());
        }
        let allowed: Vec<&str> = self.methods.iter().map(|m| m.as_str()).collect();
        let what = match method {
            Method::Post => "upload forms (POST)".to_owned(),
            m => format!("{} links", m.as_str()),
        };
        Err(Denied::new(
            "methods",
            format!(
                "caller {caller} may not issue {what} (allowed: {})",
                allowed.join(", ")
            ),
        ))
    }

    fn check_ttl(&self, caller: &CallerName, ttl: Ttl) -> Result<(), Denied> {
        if ttl > self.max_ttl {
            return Err(Denied::new(
                "max_ttl_secs",
                format!(
                    "caller {caller} may not issue links valid for {}s (max_ttl: {}s)",
                    ttl.as_secs(),
                    self.max_ttl.as_secs()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ObjectKey;

    fn rules() -> Rules {
        Rules {
            role: Role::Caller,
            signer: SignerName::parse("billing").unwrap(),
            buckets: Some(vec![Bucket::parse("uploads").unwrap()]),
            prefixes: Some(vec!["team-a/".into()]),
            methods: vec![Method::Get, Method::Head],
            max_ttl: Ttl::from_secs(3600).unwrap(),
            max_upload_bytes: Some(1024),
            rate: None,
            cert_names: vec![],
        }
    }

    fn form(key: KeyCondition, max: u64) -> FormSpec {
        FormSpec {
            bucket: Bucket::parse("uploads").unwrap(),
            key,
            size: crate::domain::SizeRange::parse(0, max).unwrap(),
            content_type: None,
            ttl: Ttl::from_secs(60).unwrap(),
        }
    }

    #[test]
    fn a_form_needs_the_post_right_a_prefix_inside_the_rules_and_a_size_within_the_max() {
        let caller = CallerName::parse("billing-api").unwrap();
        let prefix = |p: &str| KeyCondition::Prefix(ObjectKey::parse(p).unwrap());
        let e = rules()
            .authorize_form(&caller, &form(prefix("team-a/in/"), 10))
            .unwrap_err();
        assert_eq!(e.rule, "methods", "{e}");
        assert!(e.message.contains("upload forms (POST)"), "{e}");
        let mut r = rules();
        r.methods.push(Method::Post);
        assert!(
            r.authorize_form(&caller, &form(prefix("team-a/in/"), 1024))
                .is_ok()
        );
        let e = r
            .authorize_form(&caller, &form(prefix("team-a/in/"), 1025))
            .unwrap_err();
        assert_eq!(e.rule, "max_upload_bytes", "{e}");
        // "team" is wider than "team-a/": it would let keys of team-b in.
        let e = r
            .authorize_form(&caller, &form(prefix("team"), 10))
            .unwrap_err();
        assert_eq!(e.rule, "prefixes", "{e}");
        assert!(e.message.contains("key prefix \"team\""), "{e}");
        r.max_upload_bytes = None;
        assert!(
            r.authorize_form(
                &caller,
                &form(prefix("team-a/"), crate::domain::MAX_FORM_BYTES)
            )
            .is_ok()
        );
    }

    fn spec(bucket: &str, key: &str, method: Method, ttl: u64) -> LinkSpec {
        LinkSpec {
            method,
            bucket: Bucket::parse(bucket).unwrap(),
            object_key: ObjectKey::parse(key).unwrap(),
            ttl: Ttl::from_secs(ttl).unwrap(),
            content_type: None,
            content_disposition: None,
        }
    }

    fn check(s: LinkSpec) -> Result<Grant, Denied> {
        rules().authorize(&CallerName::parse("billing-api").unwrap(), &s)
    }

    #[test]
    fn a_request_inside_every_rule_is_granted_with_the_callers_signer() {
        let g = check(spec("uploads", "team-a/x.pdf", Method::Get, 60)).unwrap();
        assert_eq!(g.signer.as_str(), "billing");
    }

    #[test]
    fn another_bucket_is_denied_naming_the_allowed_ones() {
        let e = check(spec("reports", "team-a/x", Method::Get, 60)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "policy: caller billing-api may not use bucket reports (allowed: uploads)"
        );
    }

    #[test]
    fn a_prefix_sharing_the_string_start_is_not_the_prefix() {
        assert!(check(spec("uploads", "team-a-evil/x", Method::Get, 60)).is_err());
        assert!(check(spec("uploads", "team-a", Method::Get, 60)).is_err());
        assert!(check(spec("uploads", "Team-A/x", Method::Get, 60)).is_err());
    }

    #[test]
    fn dot_segments_under_a_prefix_are_denied() {
        for key in [
            "team-a/../team-b/x",
            "team-a/./x",
            "team-a/..",
            "team-a/%2e%2e/team-b/x",
            "team-a/%2E./x",
            "team-a/..\\team-b\\x",
        ] {
            let e = check(spec("uploads", key, Method::Get, 60)).unwrap_err();
            assert!(e.message.contains("'..' path segments"), "{key}: {e}");
        }
        // Dots inside a name are not segments.
        assert!(check(spec("uploads", "team-a/..x/a..b/.hidden", Method::Get, 60)).is_ok());
    }

    #[test]
    fn a_method_or_ttl_outside_the_rules_is_denied_naming_the_rule() {
        let e = check(spec("uploads", "team-a/x", Method::Put, 60)).unwrap_err();
        assert!(
            e.message
                .contains("may not issue PUT links (allowed: GET, HEAD)"),
            "{e}"
        );
        let e = check(spec("uploads", "team-a/x", Method::Get, 3601)).unwrap_err();
        assert!(e.message.contains("max_ttl: 3600s"), "{e}");
        assert!(check(spec("uploads", "team-a/x", Method::Get, 3600)).is_ok());
    }

    #[test]
    fn a_rate_of_zero_is_no_limit_and_a_burst_of_zero_is_the_rate() {
        assert_eq!(RateSpec::new(0, 10), None);
        assert_eq!(RateSpec::new(5, 0).unwrap().burst.get(), 5);
    }
}
