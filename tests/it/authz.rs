//! Who may ask for what, through a real server with TLS, client certificates,
//! bearer tokens and a policy file: one table of cases, each with the gRPC code
//! (and a piece of the message) it must get.

use crate::helpers::*;
use crate::pki::{self, Ca, Leaf};
use presignd::proto::{
    self, Method, key_service_client::KeyServiceClient, link_service_client::LinkServiceClient,
};
use sqlx::PgPool;
use tonic::{Code, Request, Status};

pub const TOKEN_STRANGER: &str = "it-token-stranger";

/// it-caller: admin. it-caller-b: GET/HEAD under team-a/ in the first bucket,
/// 600 s at most. cert-svc (certificate DNS SAN, listed in cert_names): GET
/// under certs/, 300 s.
/// uri-svc: named by a URI SAN through cert_names, HEAD in the second bucket.
pub fn policy(b0: &str, b1: &str) -> String {
    format!(
        r#"
[callers.it-caller]
role = "admin"
buckets = ["*"]
methods = ["*"]

[callers.it-caller-b]
buckets = ["{b0}"]
prefixes = ["team-a/"]
methods = ["GET", "HEAD"]
max_ttl_secs = 600

[callers.cert-svc]
cert_names = ["cert-svc"]
buckets = ["{b0}"]
prefixes = ["certs/"]
methods = ["GET"]
max_ttl_secs = 300

[callers.uri-svc]
cert_names = ["spiffe://it.example/ns/prod/uri-svc"]
buckets = ["{b1}"]
methods = ["HEAD"]
"#
    )
}

pub enum Who<'a> {
    Nobody,
    Token(&'a str),
    Cert(&'a Leaf),
    CertAndToken(&'a Leaf, &'a str),
}

pub enum Call {
    Issue(proto::IssueLinkRequest),
    ListKeys,
    Rotate,
    ListAudit,
}

/// Makes one call as `who` over a fresh TLS connection.
pub async fn call(port: u16, ca: &str, who: &Who<'_>, what: &Call) -> Result<(), Status> {
    let (identity, token) = match who {
        Who::Nobody => (None, None),
        Who::Token(t) => (None, Some(t.to_string())),
        Who::Cert(l) => (Some((l.cert.as_str(), l.key.as_str())), None),
        Who::CertAndToken(l, t) => (Some((l.cert.as_str(), l.key.as_str())), Some(t.to_string())),
    };
    let channel = tls_channel(port, ca, identity).await.expect("TLS connects");
    let auth = move |mut r: Request<()>| {
        if let Some(t) = &token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(r)
    };
    match what {
        Call::Issue(req) => LinkServiceClient::with_interceptor(channel, auth)
            .issue_link(req.clone())
            .await
            .map(|_| ()),
        Call::ListKeys => KeyServiceClient::with_interceptor(channel, auth)
            .list_signing_keys(proto::ListSigningKeysRequest::default())
            .await
            .map(|_| ()),
        Call::Rotate => KeyServiceClient::with_interceptor(channel, auth)
            .rotate_key(proto::RotateKeyRequest {
                signer: "default".into(),
                mode: proto::RotationMode::Emergency as i32,
                reason: "authz test".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        Call::ListAudit => KeyServiceClient::with_interceptor(channel, auth)
            .list_audit_events(proto::ListAuditEventsRequest::default())
            .await
            .map(|_| ()),
    }
}

pub struct SecureApp {
    pub app: TestApp,
    pub ca: Ca,
    pub other_ca: Ca,
}

/// A server with TLS, client certificates from `ca`, the tokens of the helpers
/// plus a stranger's, and the policy above.
pub async fn spawn_secure_app(pool: &PgPool, extra: &[&str]) -> SecureApp {
    let (ca, other_ca) = (Ca::new("presignd it CA"), Ca::new("some other CA"));
    let dir = pki::temp_dir();
    let mut flags = pki::server_flags(&dir, &ca, true);
    // `--callers=` replaces test_config's list: repeat the helpers' callers.
    flags.push(format!(
        "--callers={CALLER}:{},{CALLER_B}:{},it-stranger:{}",
        presignd::auth::hash_token(TOKEN),
        presignd::auth::hash_token(TOKEN_B),
        presignd::auth::hash_token(TOKEN_STRANGER)
    ));
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let bs = buckets();
    let (config, _) = policy_config(&policy(&bs[0], &bs[1]), &flags);
    let app = spawn_tls_app(config, (*pool.connect_options()).clone(), &ca.pem).await;
    SecureApp { app, ca, other_ca }
}

fn issue(bucket: &str, key: &str, method: Method, ttl: i64) -> Call {
    Call::Issue(link_request(bucket, key, method, ttl))
}

#[sqlx::test]
async fn each_caller_gets_exactly_what_its_policy_allows(pool: PgPool) {
    let s = spawn_secure_app(&pool, &[]).await;
    let bs = buckets();
    let (b0, b1) = (bs[0].as_str(), bs[1].as_str());
    let cert_svc = s.ca.client("cert-svc");
    let uri_svc = s.ca.client_uri("spiffe://it.example/ns/prod/uri-svc");
    let expired = s.ca.expired_client("cert-svc");
    let foreign = s.other_ca.client("cert-svc");
    let unnamed = s.ca.client("not-in-policy");
    // Named like callers of the policy, but listed by none in cert_names.
    let as_admin = s.ca.client(CALLER);
    let as_plain = s.ca.client(CALLER_B);
    let wrong_bucket =
        format!("policy: caller it-caller-b may not use bucket {b1} (allowed: {b0})");
    use Method::*;
    use Who::*;
    let cases: Vec<(&str, Who, Call, Code, &str)> = vec![
        (
            "plain caller inside its rules",
            Token(TOKEN_B),
            issue(b0, "team-a/r.pdf", Get, 60),
            Code::Ok,
            "",
        ),
        (
            "plain caller at its max TTL",
            Token(TOKEN_B),
            issue(b0, "team-a/r.pdf", Head, 600),
            Code::Ok,
            "",
        ),
        (
            "wrong bucket",
            Token(TOKEN_B),
            issue(b1, "team-a/r.pdf", Get, 60),
            Code::PermissionDenied,
            &wrong_bucket,
        ),
        (
            "prefix sharing the string start",
            Token(TOKEN_B),
            issue(b0, "team-a-evil/x", Get, 60),
            Code::PermissionDenied,
            "allowed prefixes: team-a/",
        ),
        (
            "another prefix",
            Token(TOKEN_B),
            issue(b0, "team-b/x", Get, 60),
            Code::PermissionDenied,
            "allowed prefixes",
        ),
        (
            "prefix in another case",
            Token(TOKEN_B),
            issue(b0, "Team-A/x", Get, 60),
            Code::PermissionDenied,
            "allowed prefixes",
        ),
        (
            "../ escape",
            Token(TOKEN_B),
            issue(b0, "team-a/../team-b/x", Get, 60),
            Code::PermissionDenied,
            "'..' path segments",
        ),
        (
            "percent-encoded ../ escape",
            Token(TOKEN_B),
            issue(b0, "team-a/%2e%2e/team-b/x", Get, 60),
            Code::PermissionDenied,
            "'..' path segments",
        ),
        (
            "backslash ..\\ escape",
            Token(TOKEN_B),
            issue(b0, "team-a/..\\team-b", Get, 60),
            Code::PermissionDenied,
            "'..' path segments",
        ),
        (
            "./ segment",
            Token(TOKEN_B),
            issue(b0, "team-a/./x", Get, 60),
            Code::PermissionDenied,
            "'..' path segments",
        ),
        (
            "method not allowed (PUT)",
            Token(TOKEN_B),
            issue(b0, "team-a/x", Put, 60),
            Code::PermissionDenied,
            "may not issue PUT links (allowed: GET, HEAD)",
        ),
        (
            "method not allowed (DELETE)",
            Token(TOKEN_B),
            issue(b0, "team-a/x", Delete, 60),
            Code::PermissionDenied,
            "may not issue DELETE links",
        ),
        (
            "TTL over the caller's max",
            Token(TOKEN_B),
            issue(b0, "team-a/x", Get, 601),
            Code::PermissionDenied,
            "max_ttl: 600s",
        ),
        (
            "bad field still INVALID_ARGUMENT first",
            Token(TOKEN_B),
            issue(b0, "team-a/x", Get, 0),
            Code::InvalidArgument,
            "ttl:",
        ),
        (
            "non-admin lists keys",
            Token(TOKEN_B),
            Call::ListKeys,
            Code::PermissionDenied,
            "KeyService is for admins",
        ),
        (
            "non-admin rotates a key",
            Token(TOKEN_B),
            Call::Rotate,
            Code::PermissionDenied,
            "KeyService is for admins",
        ),
        (
            "non-admin reads the audit trail",
            Token(TOKEN_B),
            Call::ListAudit,
            Code::PermissionDenied,
            "KeyService is for admins",
        ),
        (
            "admin lists keys",
            Token(TOKEN),
            Call::ListKeys,
            Code::Ok,
            "",
        ),
        (
            "admin reads the audit trail",
            Token(TOKEN),
            Call::ListAudit,
            Code::Ok,
            "",
        ),
        (
            "admin: any bucket, key, method",
            Token(TOKEN),
            issue(b1, "anything/at/all", Delete, 3600),
            Code::Ok,
            "",
        ),
        (
            "token of a caller without a policy entry",
            Token(TOKEN_STRANGER),
            issue(b0, "team-a/x", Get, 60),
            Code::PermissionDenied,
            "caller it-stranger has no entry in the policy",
        ),
        (
            "no credentials",
            Nobody,
            issue(b0, "team-a/x", Get, 60),
            Code::Unauthenticated,
            "missing credentials",
        ),
        (
            "no credentials on KeyService",
            Nobody,
            Call::ListKeys,
            Code::Unauthenticated,
            "missing credentials",
        ),
        (
            "unknown token",
            Token("not-a-token"),
            issue(b0, "team-a/x", Get, 60),
            Code::Unauthenticated,
            "unknown token",
        ),
        (
            "client certificate inside its rules",
            Cert(&cert_svc),
            issue(b0, "certs/a", Get, 300),
            Code::Ok,
            "",
        ),
        (
            "client certificate outside its prefix",
            Cert(&cert_svc),
            issue(b0, "team-a/a", Get, 60),
            Code::PermissionDenied,
            "caller cert-svc may not use object key",
        ),
        (
            "client certificate over its max TTL",
            Cert(&cert_svc),
            issue(b0, "certs/a", Get, 301),
            Code::PermissionDenied,
            "max_ttl: 300s",
        ),
        (
            "client certificate on KeyService",
            Cert(&cert_svc),
            Call::ListKeys,
            Code::PermissionDenied,
            "caller cert-svc is not one",
        ),
        (
            "URI SAN mapped by cert_names",
            Cert(&uri_svc),
            issue(b1, "x", Head, 60),
            Code::Ok,
            "",
        ),
        (
            "URI SAN caller, wrong method",
            Cert(&uri_svc),
            issue(b1, "x", Get, 60),
            Code::PermissionDenied,
            "caller uri-svc may not issue GET",
        ),
        (
            "expired client certificate",
            Cert(&expired),
            issue(b0, "certs/a", Get, 60),
            Code::Unauthenticated,
            "client certificate: expired",
        ),
        (
            "client certificate from an unknown CA",
            Cert(&foreign),
            issue(b0, "certs/a", Get, 60),
            Code::Unauthenticated,
            "not issued by a trusted CA",
        ),
        (
            "unknown CA even with a valid token",
            CertAndToken(&foreign, TOKEN_B),
            issue(b0, "team-a/x", Get, 60),
            Code::Unauthenticated,
            "not issued by a trusted CA",
        ),
        (
            "certificate naming no caller of the policy",
            Cert(&unnamed),
            issue(b0, "certs/a", Get, 60),
            Code::Unauthenticated,
            "no caller in the policy",
        ),
        (
            "certificate whose CN is an admin's name, not listed",
            Cert(&as_admin),
            Call::ListKeys,
            Code::Unauthenticated,
            "no caller in the policy lists",
        ),
        (
            "certificate whose CN is a caller's name, not listed",
            Cert(&as_plain),
            issue(b0, "team-a/x", Get, 60),
            Code::Unauthenticated,
            "no caller in the policy lists",
        ),
        (
            "certificate and token of different callers",
            CertAndToken(&cert_svc, TOKEN_B),
            issue(b0, "certs/a", Get, 60),
            Code::Unauthenticated,
            "names caller cert-svc but the bearer token",
        ),
    ];
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for (name, who, what, code, needle) in &cases {
        let got = call(s.app.port, &s.ca.pem, who, what).await;
        let (got_code, msg) = match &got {
            Ok(()) => (Code::Ok, String::new()),
            Err(st) => (st.code(), st.message().to_owned()),
        };
        if got_code != *code || !msg.contains(needle) {
            failures.push(format!(
                "{name}: expected {code:?} with {needle:?}, got {got_code:?}: {msg}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Only granted links were recorded, each with its caller's signer.
    let links: Vec<(String, String)> =
        sqlx::query_as("SELECT caller, bucket FROM links ORDER BY issued_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    let granted = cases
        .iter()
        .filter(|c| c.3 == Code::Ok && matches!(c.2, Call::Issue(_)))
        .count();
    assert_eq!(links.len(), granted, "{links:?}");
}

/// Every method of presignd.v1's `service`, from the descriptor set the
/// server is built from (a method added later is covered without a word
/// here): its path and whether it streams its answer.
fn methods_of(service: &str) -> Vec<(String, bool)> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .iter()
        .filter(|f| f.package() == "presignd.v1")
        .flat_map(|f| &f.service)
        .filter(|s| s.name() == service)
        .flat_map(|s| &s.method)
        .map(|m| {
            (
                format!("/presignd.v1.{service}/{}", m.name()),
                m.server_streaming(),
            )
        })
        .collect()
}

/// Calls `path` with an empty request (every field unset: the answer must
/// come before any field is judged) as `token` (None: no authorization
/// header); the error it ends with.
async fn refusal(
    channel: tonic::transport::Channel,
    path: &str,
    streaming: bool,
    token: Option<&str>,
) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = Request::new(());
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let at = tonic::codegen::http::uri::PathAndQuery::try_from(path).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    if streaming {
        match grpc.server_streaming(req, at, codec).await {
            Err(s) => s,
            Ok(mut answers) => answers
                .get_mut()
                .message()
                .await
                .expect_err(&format!("{path} streamed an answer")),
        }
    } else {
        grpc.unary(req, at, codec)
            .await
            .expect_err(&format!("{path} answered"))
    }
}

#[sqlx::test]
async fn every_key_service_method_refuses_non_admins_and_every_method_the_unauthenticated(
    pool: PgPool,
) {
    let app = spawn_app(&pool).await;
    let key_service = methods_of("KeyService");
    let link_service = methods_of("LinkService");
    assert!(
        key_service.len() >= 8 && link_service.len() >= 12,
        "the descriptor set lists the services: {key_service:?} {link_service:?}"
    );
    for (path, streaming) in &key_service {
        let s = refusal(app.channel.clone(), path, *streaming, Some(TOKEN_B)).await;
        assert_eq!(s.code(), Code::PermissionDenied, "{path}: {s:?}");
        assert!(
            s.message().contains("KeyService is for admins"),
            "{path}: {s:?}"
        );
    }
    for (path, streaming) in key_service.iter().chain(&link_service) {
        let s = refusal(app.channel.clone(), path, *streaming, None).await;
        assert_eq!(s.code(), Code::Unauthenticated, "{path}: {s:?}");
    }
    // Refused before anything was done.
    let revocations: i64 = sqlx::query_scalar("SELECT count(*) FROM revocations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(revocations, 0);
}
