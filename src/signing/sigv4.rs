//! SigV4 query presigning, S3 flavour, written out: the URL aws-sdk-s3's
//! presigner would give, byte for byte (tests/it/presign_equivalence.rs proves
//! it against the SDK), at the cost of one SHA-256 of the canonical request and
//! one HMAC per URL. The signing key (the HMAC chain over date, region and
//! service) is derived once per UTC day and region (buckets live in different
//! regions) and kept, already keyed, in an ArcSwap.
//!
//! The rules the SDK follows, and so do we:
//! * the path is `/bucket/key` (path style) or `/key` on `bucket.host`
//!   (virtual-hosted), every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`)
//!   and the key's `/` percent-encoded, once (S3 signs the path as sent);
//! * the query the request carries comes first, in the operation's order
//!   (`x-id=GetObject`, then `response-content-disposition`), then
//!   X-Amz-Algorithm, -Credential, -Date, -Expires, -SignedHeaders, -Signature;
//!   the canonical query is the same pairs, encoded, sorted;
//! * signed headers: `host` (without a default port), and `content-type` for a
//!   PUT that names one (its value trimmed, runs of spaces folded to one);
//!   the payload is `UNSIGNED-PAYLOAD`;
//! * a multipart call (`Multipart`) carries its own query instead, in the
//!   SDK's order (UploadPart: `x-id`, `partNumber`, `uploadId`; Create:
//!   `uploads` without a value, signed as `uploads=`), with its own HTTP
//!   method (POST, PUT, DELETE) and no bound header but `host`.

use super::signed::{Presigned, SignError};
use crate::domain::Method;
use crate::secret::SecretString;
use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

const SERVICE: &str = "s3";
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Where the URLs point, parsed once from the configured endpoint.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    /// `http://` or `https://`.
    scheme_sep: String,
    /// host[:port] as written in the URL.
    authority: String,
    /// The Host header as signed: the authority without a default port.
    host_header: String,
    /// The endpoint's own path, without a trailing '/'.
    base_path: String,
    /// Over plain http, a bucket with dots may still be a host name.
    http: bool,
    /// The host is an IP address (as the `url` crate reads it, like the SDK).
    ip: bool,
    path_style: bool,
}

impl Endpoint {
    pub(super) fn parse(endpoint: &str, path_style: bool) -> Result<Self, String> {
        let (scheme, rest) = endpoint
            .split_once("://")
            .ok_or_else(|| format!("S3 endpoint {endpoint:?} has no scheme"))?;
        let default_port = match scheme {
            "http" => "80",
            "https" => "443",
            _ => {
                return Err(format!(
                    "S3 endpoint {endpoint:?}: scheme must be http or https"
                ));
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || path.contains(['?', '#']) || authority.contains('@') {
            return Err(format!(
                "S3 endpoint {endpoint:?} must be scheme://host[:port][/path]"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p))
                if (h.starts_with('[') == h.ends_with(']'))
                    && p.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (h, Some(p))
            }
            _ => (authority, None),
        };
        let host_header = match port {
            Some(p) if p == default_port => host.to_owned(),
            _ => authority.to_owned(),
        };
        Ok(Self {
            scheme_sep: format!("{scheme}://"),
            authority: authority.to_owned(),
            host_header,
            base_path: path.trim_end_matches('/').to_owned(),
            http: scheme == "http",
            ip: matches!(
                url::Url::parse(endpoint).map(|u| u.host().map(|h| h.to_owned())),
                Ok(Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)))
            ),
            path_style,
        })
    }

    /// Virtual-hosted unless path style is forced, as the SDK's endpoint
    /// rules decide for a custom endpoint: a bucket of one DNS label on a host
    /// name (not an IP); over plain http, also a dotted bucket of 3-63
    /// character labels, whatever the host. Anything else is path style.
    fn virtual_hosted(&self, bucket: &str) -> bool {
        if self.path_style {
            false
        } else if virtual_hostable_label(bucket) {
            !self.ip
        } else {
            self.http && bucket.split('.').all(virtual_hostable_label)
        }
    }
}

/// What one URL is for.
pub(super) struct Request<'a> {
    pub method: Method,
    pub bucket: &'a str,
    pub key: &'a str,
    pub content_type: Option<&'a str>,
    pub content_disposition: Option<&'a str>,
    /// The operation's `x-id` (GetObject, PutObject, DeleteObject), as the SDK
    /// sends it; only the AWS documentation's example goes without.
    pub x_id: bool,
    /// Seconds since the epoch (X-Amz-Date).
    pub time: u64,
    pub expires_secs: u64,
    /// A multipart upload's call: its method and query replace `method`'s.
    pub multipart: Option<Multipart<'a>>,
}

/// The calls of a multipart upload (S3's CreateMultipartUpload, UploadPart,
/// CompleteMultipartUpload, AbortMultipartUpload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multipart<'a> {
    Create,
    Part { number: u32, upload_id: &'a str },
    Complete { upload_id: &'a str },
    Abort { upload_id: &'a str },
}

impl Multipart<'_> {
    pub fn http_method(&self) -> &'static str {
        match self {
            Self::Create | Self::Complete { .. } => "POST",
            Self::Part { .. } => "PUT",
            Self::Abort { .. } => "DELETE",
        }
    }

    /// The operation's query, in the order the SDK writes it; `None`: a name
    /// without a value.
    fn query(&self) -> Vec<(&'static str, Option<String>)> {
        match *self {
            Self::Create => vec![("uploads", None)],
            Self::Part { number, upload_id } => vec![
                ("x-id", Some("UploadPart".into())),
                ("partNumber", Some(number.to_string())),
                ("uploadId", Some(upload_id.into())),
            ],
            Self::Complete { upload_id } => vec![("uploadId", Some(upload_id.into()))],
            Self::Abort { upload_id } => vec![
                ("x-id", Some("AbortMultipartUpload".into())),
                ("uploadId", Some(upload_id.into())),
            ],
        }
    }
}

/// What a signer derives once per UTC day and region.
struct DayKey {
    day: u64,
    region: Box<str>,
    /// `YYYYMMDD` of the day.
    date: [u8; 8],
    /// HMAC already keyed with the day's signing key: a clone is one copy.
    mac: HmacSha256,
    /// X-Amz-Credential's value as the URL carries it:
    /// `AKID%2F20130524%2Fus-east-1%2Fs3%2Faws4_request`.
    credential: Box<str>,
    /// The string to sign's scope line: `20130524/us-east-1/s3/aws4_request\n`.
    scope: Box<str>,
}

/// Day keys kept at most: one per region a key signs for, today and yesterday.
const MAX_DAY_KEYS: usize = 64;

/// One access key's presigner. The secret stays inside (it is never printed);
/// the derived keys of the current day, one per region, are cached.
pub(super) struct QuerySigner {
    access_key: String,
    /// "AWS4" + the secret access key: the first HMAC key of the chain.
    k_secret: SecretString,
    days: ArcSwap<Vec<Arc<DayKey>>>,
}

/// A day key as `QuerySigner::day_key` gives it: borrowed from the cache,
/// so a URL touches no count (an Arc's would be one more cache line the
/// runtime's threads pass around for every URL), or just derived.
enum DayKeyRef {
    Cached(arc_swap::Guard<Arc<Vec<Arc<DayKey>>>>, usize),
    Derived(Arc<DayKey>),
}

impl std::ops::Deref for DayKeyRef {
    type Target = DayKey;

    fn deref(&self) -> &DayKey {
        match self {
            Self::Cached(days, i) => &days[*i],
            Self::Derived(key) => key,
        }
    }
}

/// A canonical request and the URL that carries its signature.
pub(super) struct Signed {
    pub url: String,
    /// Read by the tests, which compare it with AWS's documented one.
    #[cfg_attr(not(test), allow(dead_code))]
    pub canonical_request: String,
    pub signature: Range<usize>,
}

impl QuerySigner {
    pub(super) fn new(access_key: &str, secret: &SecretString) -> Self {
        Self {
            access_key: access_key.to_owned(),
            k_secret: SecretString::new(format!("AWS4{}", secret.expose())),
            days: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// The day's key for `region`, derived on its first use that day.
    fn day_key(&self, day: u64, region: &str) -> DayKeyRef {
        let days = self.days.load();
        match days
            .iter()
            .position(|k| k.day == day && &*k.region == region)
        {
            Some(i) => DayKeyRef::Cached(days, i),
            None => DayKeyRef::Derived(self.derive(day, region)),
        }
    }

    /// Derives the day's key for `region` and caches it.
    fn derive(&self, day: u64, region: &str) -> Arc<DayKey> {
        let hmac = |key: &[u8], data: &[u8]| -> [u8; 32] {
            let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
            m.update(data);
            m.finalize().into_bytes().into()
        };
        let (date, _) = amz_date(day * 86_400);
        let k = hmac(self.k_secret.expose().as_bytes(), &date);
        let k = hmac(&k, region.as_bytes());
        let k = hmac(&k, SERVICE.as_bytes());
        let k = hmac(&k, b"aws4_request");
        let mut credential = String::new();
        encode(&mut credential, &self.access_key, false);
        credential.push_str("%2F");
        credential.push_str(ascii(&date));
        credential.push_str("%2F");
        encode(&mut credential, region, false);
        credential.push_str("%2Fs3%2Faws4_request");
        let new = Arc::new(DayKey {
            day,
            region: region.into(),
            date,
            mac: HmacSha256::new_from_slice(&k).expect("HMAC takes any key length"),
            credential: credential.into(),
            scope: format!("{}/{region}/{SERVICE}/aws4_request\n", ascii(&date)).into(),
        });
        // Keys of days before yesterday go (the clock moved on); a signer
        // asked for many regions starts over rather than grow without bound.
        self.days.rcu(|days| {
            let mut kept: Vec<Arc<DayKey>> = days
                .iter()
                .filter(|k| k.day + 1 >= day && !(k.day == day && *k.region == *region))
                .cloned()
                .collect();
            if kept.len() >= MAX_DAY_KEYS {
                kept.clear();
            }
            kept.push(new.clone());
            kept
        });
        new
    }

    pub(super) fn presign(
        &self,
        ep: &Endpoint,
        req: &Request<'_>,
        region: &str,
    ) -> Result<Presigned, SignError> {
        let s = self.sign(ep, req, region)?;
        let headers = match (req.method, req.content_type) {
            (Method::Put, Some(t)) => vec![("content-type".to_owned(), t.to_owned())],
            _ => Vec::new(),
        };
        Ok(Presigned::new(s.url, headers, s.signature))
    }

    /// A bound of a URL's length, so it is allocated once: each part encoded
    /// at most 3 bytes a byte, and the query's fixed names and values (~320
    /// bytes; 256 in all was short of a GET's, and the URL grew once a link).
    /// A multipart call's own query (an upload id) may exceed it.
    fn url_bound(&self, ep: &Endpoint, req: &Request<'_>, region: &str) -> usize {
        let encoded = req.bucket.len()
            + req.key.len()
            + req.content_disposition.map_or(0, str::len)
            + self.access_key.len()
            + region.len();
        400 + ep.scheme_sep.len() + ep.authority.len() + ep.base_path.len() + 3 * encoded
    }

    pub(super) fn sign(
        &self,
        ep: &Endpoint,
        req: &Request<'_>,
        region: &str,
    ) -> Result<Signed, SignError> {
        if req.key.is_empty() {
            return Err(SignError::Presign("object key is empty".into()));
        }
        if req.method == Method::Post {
            return Err(SignError::Presign(
                "a POST is signed as a form (sign_policy), not as a URL".into(),
            ));
        }
        let day_key = self.day_key(req.time / 86_400, region);
        let datetime = amz_datetime(&day_key.date, req.time % 86_400);
        let virtual_hosted = ep.virtual_hosted(req.bucket);

        // The URL up to the query; the path part is also the canonical URI.
        let mut url = String::with_capacity(self.url_bound(ep, req, region));
        url.push_str(&ep.scheme_sep);
        if virtual_hosted {
            url.push_str(req.bucket);
            url.push('.');
        }
        url.push_str(&ep.authority);
        let path_start = url.len();
        url.push_str(&ep.base_path);
        if !virtual_hosted {
            url.push('/');
            encode(&mut url, req.bucket, false);
        }
        url.push('/');
        encode(&mut url, req.key, true);
        let path = path_start..url.len();

        // The operation's own query, in the SDK's order.
        let x_id = match req.method {
            _ if !req.x_id || req.multipart.is_some() => None,
            Method::Get => Some("GetObject"),
            Method::Put => Some("PutObject"),
            Method::Delete => Some("DeleteObject"),
            Method::Head | Method::Post => None,
        };
        let (disposition, content_type) = match (req.multipart, req.method) {
            (Some(_), _) => (None, None),
            (None, Method::Get) => (req.content_disposition, None),
            (None, Method::Put) => (None, req.content_type),
            (None, _) => (None, None),
        };
        let mut sep = '?';
        let mut next = |url: &mut String| {
            url.push(sep);
            sep = '&';
        };
        let mut x_id_range = 0..0;
        if let Some(x) = x_id {
            next(&mut url);
            let start = url.len();
            url.push_str("x-id=");
            url.push_str(x);
            x_id_range = start..url.len();
        }
        let mut disposition_range = 0..0;
        if let Some(d) = disposition {
            next(&mut url);
            let start = url.len();
            url.push_str("response-content-disposition=");
            encode(&mut url, d, false);
            disposition_range = start..url.len();
        }
        // A multipart call's query: in the URL in the SDK's order, in the
        // canonical query sorted (after every X-Amz-*, which sort first).
        let mut multipart_query = String::new();
        if let Some(op) = req.multipart {
            let mut query = op.query();
            for (name, value) in &query {
                next(&mut url);
                url.push_str(name);
                if let Some(v) = value {
                    url.push('=');
                    encode(&mut url, v, false);
                }
            }
            query.sort_by_key(|(name, _)| *name);
            for (name, value) in query {
                multipart_query.push('&');
                multipart_query.push_str(name);
                multipart_query.push('=');
                encode(&mut multipart_query, value.as_deref().unwrap_or(""), false);
            }
        }
        next(&mut url);
        let amz_start = url.len();
        url.push_str("X-Amz-Algorithm=");
        url.push_str(ALGORITHM);
        url.push_str("&X-Amz-Credential=");
        url.push_str(&day_key.credential);
        url.push_str("&X-Amz-Date=");
        url.push_str(ascii(&datetime));
        url.push_str("&X-Amz-Expires=");
        push_u64(&mut url, req.expires_secs);
        url.push_str("&X-Amz-SignedHeaders=");
        url.push_str(if content_type.is_some() {
            "content-type%3Bhost"
        } else {
            "host"
        });
        let amz = amz_start..url.len();

        // The canonical request: the same pieces, the query sorted (every
        // X-Amz-* sorts before the lowercase names).
        let mut creq = String::with_capacity(url.len() + 128);
        creq.push_str(
            req.multipart
                .map_or(req.method.as_str(), |m| m.http_method()),
        );
        creq.push('\n');
        creq.push_str(&url[path.clone()]);
        creq.push('\n');
        creq.push_str(&url[amz]);
        creq.push_str(&multipart_query);
        for r in [disposition_range, x_id_range] {
            if !r.is_empty() {
                creq.push('&');
                creq.push_str(&url[r]);
            }
        }
        creq.push('\n');
        if let Some(t) = content_type {
            creq.push_str("content-type:");
            push_trimmed(&mut creq, t);
            creq.push('\n');
        }
        creq.push_str("host:");
        if virtual_hosted {
            creq.push_str(req.bucket);
            creq.push('.');
        }
        creq.push_str(&ep.host_header);
        creq.push_str("\n\n");
        creq.push_str(if content_type.is_some() {
            "content-type;host"
        } else {
            "host"
        });
        creq.push_str("\nUNSIGNED-PAYLOAD");

        // The string to sign, straight into the day's HMAC.
        let mut mac = day_key.mac.clone();
        mac.update(ALGORITHM.as_bytes());
        mac.update(b"\n");
        mac.update(&datetime);
        mac.update(b"\n");
        mac.update(day_key.scope.as_bytes());
        let mut hex = [0u8; 64];
        hex_into(&Sha256::digest(creq.as_bytes()), &mut hex);
        mac.update(&hex);
        hex_into(&mac.finalize().into_bytes(), &mut hex);

        url.push_str("&X-Amz-Signature=");
        let start = url.len();
        url.push_str(ascii(&hex));
        Ok(Signed {
            signature: start..url.len(),
            url,
            canonical_request: creq,
        })
    }
}

/// A browser form's signature (SigV4 POST policy): the string to sign is
/// the base64 policy itself, signed with the same day key as URLs.
impl QuerySigner {
    /// `x-amz-credential` for a form signed at `time` (seconds since the
    /// epoch) for `region`, and its `x-amz-date`.
    pub(super) fn form_scope(&self, time: u64, region: &str) -> (String, String) {
        let (date, datetime) = amz_date(time);
        (
            format!(
                "{}/{}/{region}/{SERVICE}/aws4_request",
                self.access_key,
                ascii(&date)
            ),
            ascii(&datetime).to_owned(),
        )
    }

    /// The hex signature of `policy_b64` as of `time` for `region`.
    pub(super) fn sign_policy(&self, time: u64, region: &str, policy_b64: &str) -> String {
        let mut mac = self.day_key(time / 86_400, region).mac.clone();
        mac.update(policy_b64.as_bytes());
        let mut hex = [0u8; 64];
        hex_into(&mac.finalize().into_bytes(), &mut hex);
        ascii(&hex).to_owned()
    }
}

impl Endpoint {
    /// Where a browser form posts for `bucket`: the bucket's URL, in the
    /// style its presigned URLs have (`scheme://bucket.host/` or
    /// `scheme://host/bucket`).
    pub(super) fn bucket_url(&self, bucket: &str) -> String {
        let mut url = self.scheme_sep.clone();
        if self.virtual_hosted(bucket) {
            url.push_str(bucket);
            url.push('.');
            url.push_str(&self.authority);
            url.push_str(&self.base_path);
            url.push('/');
        } else {
            url.push_str(&self.authority);
            url.push_str(&self.base_path);
            url.push('/');
            encode(&mut url, bucket, false);
        }
        url
    }
}

/// `^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$` and not an IPv4 address: the SDK's
/// `isVirtualHostableS3Bucket` for one label.
fn virtual_hostable_label(label: &str) -> bool {
    let b = label.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (3..=63).contains(&b.len())
        && edge(&b[0])
        && edge(&b[b.len() - 1])
        && b.iter().all(|c| edge(c) || *c == b'-')
}

/// Bytes that stay as they are: RFC 3986's unreserved set.
const fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// `unreserved`, one lookup a byte.
const KEEP: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = unreserved(b as u8);
        b += 1;
    }
    t
};

/// `%00%01...%FF`: byte b's escape is `ESCAPES[3 * b..3 * b + 3]`.
const ESCAPES: &str = {
    const BYTES: [u8; 768] = {
        let mut t = [0u8; 768];
        let mut b = 0;
        while b < 256 {
            t[3 * b] = b'%';
            t[3 * b + 1] = HEX[b >> 4];
            t[3 * b + 2] = HEX[b & 15];
            b += 1;
        }
        t
    };
    match std::str::from_utf8(&BYTES) {
        Ok(s) => s,
        Err(_) => panic!("escapes are ASCII"),
    }
};

/// Percent-encodes `s` onto `out`: every byte but the unreserved ones (and '/'
/// if `keep_slash`), upper-case hex, as the SDK does. The runs between
/// escapes are copied as they are: unreserved bytes are ASCII, so a run's
/// ends are character boundaries.
fn encode(out: &mut String, s: &str, keep_slash: bool) {
    let mut clean = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if KEEP[b as usize] || (keep_slash && b == b'/') {
            continue;
        }
        if clean < i {
            out.push_str(&s[clean..i]);
        }
        let e = 3 * b as usize;
        out.push_str(&ESCAPES[e..e + 3]);
        clean = i + 1;
    }
    if clean < s.len() {
        out.push_str(&s[clean..]);
    }
}

/// A header value as SigV4 signs it: trimmed, each run of spaces one space.
fn push_trimmed(out: &mut String, v: &str) {
    let mut space = false;
    for c in v.trim_matches(' ').chars() {
        if c == ' ' {
            if !space {
                out.push(' ');
            }
            space = true;
        } else {
            out.push(c);
            space = false;
        }
    }
}

fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(ascii(&buf[i..]));
}

fn hex_into(bytes: &[u8], out: &mut [u8; 64]) {
    const LOWER: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = LOWER[(b >> 4) as usize];
        out[2 * i + 1] = LOWER[(b & 15) as usize];
    }
}

fn ascii(b: &[u8]) -> &str {
    std::str::from_utf8(b).expect("ASCII")
}

/// `YYYYMMDD` and `YYYYMMDDTHHMMSSZ` of `secs` since the epoch (UTC).
fn amz_date(secs: u64) -> ([u8; 8], [u8; 16]) {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let mut date = [0u8; 8];
    digits(&mut date[0..4], y as u64);
    digits(&mut date[4..6], m as u64);
    digits(&mut date[6..8], d as u64);
    (date, amz_datetime(&date, secs % 86_400))
}

/// `YYYYMMDDTHHMMSSZ` of the day `date`, `secs` seconds into it.
fn amz_datetime(date: &[u8; 8], secs: u64) -> [u8; 16] {
    let mut dt = [0u8; 16];
    dt[..8].copy_from_slice(date);
    dt[8] = b'T';
    digits(&mut dt[9..11], secs / 3600);
    digits(&mut dt[11..13], secs % 3600 / 60);
    digits(&mut dt[13..15], secs % 60);
    dt[15] = b'Z';
    dt
}

/// `v` in decimal, right-aligned and zero-padded in `out`.
fn digits(out: &mut [u8], mut v: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Howard Hinnant's days-to-civil: (year, month, day) of a day since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Seconds since the epoch of `t` (0 before it).
pub(super) fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws_example() -> (QuerySigner, Endpoint) {
        let signer = QuerySigner::new(
            "AKIAIOSFODNN7EXAMPLE",
            &SecretString::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
        );
        (
            signer,
            Endpoint::parse("https://s3.amazonaws.com", false).unwrap(),
        )
    }

    /// The presigned GET of the AWS documentation ("Authenticating Requests:
    /// Using Query Parameters", Signature Version 4), which has no x-id: its
    /// canonical request, signature and URL.
    #[test]
    fn the_aws_documentation_example_signs_to_its_signature() {
        let (signer, ep) = aws_example();
        let time = 1_369_353_600; // 2013-05-24T00:00:00Z
        let (date, datetime) = amz_date(time);
        assert_eq!(ascii(&date), "20130524");
        assert_eq!(ascii(&datetime), "20130524T000000Z");
        let signed = signer
            .sign(
                &ep,
                &Request {
                    method: Method::Get,
                    bucket: "examplebucket",
                    key: "test.txt",
                    content_type: None,
                    content_disposition: None,
                    x_id: false,
                    time,
                    expires_secs: 86_400,
                    multipart: None,
                },
                "us-east-1",
            )
            .unwrap();
        assert_eq!(
            signed.canonical_request,
            "GET\n/test.txt\nX-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\nhost:examplebucket.s3.amazonaws.com\n\nhost\nUNSIGNED-PAYLOAD"
        );
        let signature = "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
        assert_eq!(&signed.url[signed.signature.clone()], signature);
        assert_eq!(
            signed.url,
            format!(
                "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature={signature}"
            )
        );
        // A second URL of the day signs with the cached key, to the same result.
        let again = signer
            .sign(
                &ep,
                &Request {
                    method: Method::Get,
                    bucket: "examplebucket",
                    key: "test.txt",
                    content_type: None,
                    content_disposition: None,
                    x_id: false,
                    time,
                    expires_secs: 86_400,
                    multipart: None,
                },
                "us-east-1",
            )
            .unwrap();
        assert_eq!(again.url, signed.url);
    }

    fn cached(signer: &QuerySigner) -> Vec<(u64, String)> {
        let mut v: Vec<_> = signer
            .days
            .load()
            .iter()
            .map(|k| (k.day, k.region.to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_day_key_is_derived_once_per_day_and_region() {
        let (signer, _) = aws_example();
        let first = signer.day_key(15_849, "us-east-1");
        assert_eq!(ascii(&first.date), "20130524");
        assert_eq!(
            &*first.credential,
            "AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
        );
        assert_eq!(&*first.scope, "20130524/us-east-1/s3/aws4_request\n");
        let again = signer.day_key(15_849, "us-east-1");
        assert!(std::ptr::eq(&*first, &*again), "reused");
        let _ = signer.day_key(15_849, "eu-west-3");
        assert_eq!(
            cached(&signer),
            [(15_849, "eu-west-3".into()), (15_849, "us-east-1".into())]
        );
        let _ = signer.day_key(15_851, "us-east-1");
        assert_eq!(
            cached(&signer),
            [(15_851, "us-east-1".into())],
            "older days go"
        );
    }

    /// The URL is written into the one allocation `url_bound` sizes: it
    /// never grows (a grown String's capacity is a doubling, not the bound).
    #[test]
    fn a_url_fits_the_allocation_made_for_it() {
        let (signer, aws) = aws_example();
        let path_style = Endpoint::parse("http://127.0.0.1:3900/base", true).unwrap();
        let every_class = "a b/c+d%e?f#g&h=i;j:k@l$m,n'o(p)q*r!s~t_u-v.w/ü/日本/\u{1F600}/%2F";
        for ep in [&aws, &path_style] {
            for (method, key, content_type, disposition) in [
                (Method::Get, "test.txt", None, None),
                (
                    Method::Get,
                    every_class,
                    None,
                    Some("attachment; filename=\"ü b.txt\""),
                ),
                (
                    Method::Put,
                    every_class,
                    Some("text/plain; charset=utf-8"),
                    None,
                ),
                (Method::Head, every_class, None, None),
                (Method::Delete, every_class, None, None),
            ] {
                let req = Request {
                    method,
                    bucket: "examplebucket",
                    key,
                    content_type,
                    content_disposition: disposition,
                    x_id: true,
                    time: 1_369_353_600,
                    expires_secs: 604_800,
                    multipart: None,
                };
                let signed = signer.sign(ep, &req, "ap-southeast-2").unwrap();
                let bound = signer.url_bound(ep, &req, "ap-southeast-2");
                assert!(signed.url.len() <= bound, "{} > {bound}", signed.url.len());
                assert_eq!(signed.url.capacity(), bound, "{method:?} {key}: grew");
            }
        }
    }

    #[test]
    fn a_region_is_part_of_the_signature() {
        let (signer, ep) = aws_example();
        let req = Request {
            method: Method::Get,
            bucket: "examplebucket",
            key: "test.txt",
            content_type: None,
            content_disposition: None,
            x_id: false,
            time: 1_369_353_600,
            expires_secs: 86_400,
            multipart: None,
        };
        let east = signer.sign(&ep, &req, "us-east-1").unwrap();
        let paris = signer.sign(&ep, &req, "eu-west-3").unwrap();
        assert!(
            paris
                .url
                .contains("%2F20130524%2Feu-west-3%2Fs3%2Faws4_request")
        );
        assert_ne!(
            &east.url[east.signature.clone()],
            &paris.url[paris.signature.clone()]
        );
        // The cached key of one region never signs for another.
        let again = signer.sign(&ep, &req, "us-east-1").unwrap();
        assert_eq!(again.url, east.url);
    }

    /// The POST policy of the AWS documentation ("Example: Browser-Based
    /// Upload using HTTP POST (Using AWS Signature Version 4)"): its base64
    /// policy, as the page gives it, signs to the page's signature.
    #[test]
    fn the_aws_post_policy_example_signs_to_its_signature() {
        let (signer, _) = aws_example();
        let policy = "eyAiZXhwaXJhdGlvbiI6ICIyMDE1LTEyLTMwVDEyOjAwOjAwLjAwMFoiLA0KICAiY29uZGl0aW9ucyI6IFsNCiAgICB7ImJ1Y2tldCI6ICJzaWd2NGV4YW1wbGVidWNrZXQifSwNCiAgICBbInN0YXJ0cy13aXRoIiwgIiRrZXkiLCAidXNlci91c2VyMS8iXSwNCiAgICB7ImFjbCI6ICJwdWJsaWMtcmVhZCJ9LA0KICAgIHsic3VjY2Vzc19hY3Rpb25fcmVkaXJlY3QiOiAiaHR0cDovL3NpZ3Y0ZXhhbXBsZWJ1Y2tldC5zMy5hbWF6b25hd3MuY29tL3N1Y2Nlc3NmdWxfdXBsb2FkLmh0bWwifSwNCiAgICBbInN0YXJ0cy13aXRoIiwgIiRDb250ZW50LVR5cGUiLCAiaW1hZ2UvIl0sDQogICAgeyJ4LWFtei1tZXRhLXV1aWQiOiAiMTQzNjUxMjM2NTEyNzQifSwNCiAgICB7IngtYW16LXNlcnZlci1zaWRlLWVuY3J5cHRpb24iOiAiQUVTMjU2In0sDQogICAgWyJzdGFydHMtd2l0aCIsICIkeC1hbXotbWV0YS10YWciLCAiIl0sDQoNCiAgICB7IngtYW16LWNyZWRlbnRpYWwiOiAiQUtJQUlPU0ZPRE5ON0VYQU1QTEUvMjAxNTEyMjkvdXMtZWFzdC0xL3MzL2F3czRfcmVxdWVzdCJ9LA0KICAgIHsieC1hbXotYWxnb3JpdGhtIjogIkFXUzQtSE1BQy1TSEEyNTYifSwNCiAgICB7IngtYW16LWRhdGUiOiAiMjAxNTEyMjlUMDAwMDAwWiIgfQ0KICBdDQp9";
        let time = 1_451_347_200; // 2015-12-29T00:00:00Z
        assert_eq!(
            signer.sign_policy(time, "us-east-1", policy),
            "8afdbf4008c03f22c2cd3cdb72e4afbb1f6a588f3255ac628749a66d7f09699e"
        );
        assert_eq!(
            signer.form_scope(time, "us-east-1"),
            (
                "AKIAIOSFODNN7EXAMPLE/20151229/us-east-1/s3/aws4_request".to_owned(),
                "20151229T000000Z".to_owned()
            )
        );
        // The day key a URL of that day was signed with signed the form too.
        assert_eq!(cached(&signer), [(16_798, "us-east-1".into())]);
    }

    #[test]
    fn a_form_posts_to_the_bucket_url_in_the_configured_style() {
        let virt = Endpoint::parse("https://s3.example.com", false).unwrap();
        assert_eq!(virt.bucket_url("photos"), "https://photos.s3.example.com/");
        let path = Endpoint::parse("http://127.0.0.1:3900", true).unwrap();
        assert_eq!(path.bucket_url("photos"), "http://127.0.0.1:3900/photos");
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(ascii(&amz_date(0).1), "19700101T000000Z");
        assert_eq!(ascii(&amz_date(951_782_400).1), "20000229T000000Z");
        assert_eq!(ascii(&amz_date(4_102_444_799).1), "20991231T235959Z");
    }

    #[test]
    fn encoding_keeps_unreserved_bytes_and_slashes_of_the_key_only() {
        let mut s = String::new();
        encode(&mut s, "a b/é~%+", true);
        assert_eq!(s, "a%20b/%C3%A9~%25%2B");
        s.clear();
        encode(&mut s, "a/b", false);
        assert_eq!(s, "a%2Fb");
    }

    #[test]
    fn header_values_are_trimmed_and_folded() {
        let mut s = String::new();
        push_trimmed(&mut s, "  text/plain;   charset=x  ");
        assert_eq!(s, "text/plain; charset=x");
    }
}
