//! Certificates made for the tests with rcgen: a CA, a server certificate for
//! 127.0.0.1/localhost, client certificates (valid, expired, from another CA).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::path::PathBuf;

pub struct Ca {
    pub pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self {
            pem: issuer.pem(),
            issuer,
        }
    }

    pub fn server(&self) -> Leaf {
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p)
    }

    /// A client certificate whose DNS SAN and CN are `name`.
    pub fn client(&self, name: &str) -> Leaf {
        self.sign(client_params(name))
    }

    /// A client certificate naming `uri` in a URI SAN only (CN "uri-only").
    pub fn client_uri(&self, uri: &str) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
        p.distinguished_name.push(DnType::CommonName, "uri-only");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p)
    }

    /// A client certificate that expired last year.
    pub fn expired_client(&self, name: &str) -> Leaf {
        let mut p = client_params(name);
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.sign(p)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn client_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(vec![name.to_owned()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p
}

/// A fresh directory for this test's files.
pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("presignd-it-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the CA, the server certificate and key; returns the server flags.
pub fn server_flags(dir: &std::path::Path, ca: &Ca, client_ca: bool) -> Vec<String> {
    let server = ca.server();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let mut flags = vec![
        format!("--tls-cert={}", write("server.pem", &server.cert)),
        format!("--tls-key={}", write("server.key", &server.key)),
    ];
    if client_ca {
        flags.push(format!("--client-ca={}", write("ca.pem", &ca.pem)));
    }
    flags
}
