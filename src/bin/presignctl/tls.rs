//! TLS to presignd: the CA that issued its certificate, and a client
//! certificate when callers are identified by mTLS.

use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

#[derive(Args)]
pub(crate) struct TlsArgs {
    /// CA certificate (PEM) that issued presignd's certificate (use an https://
    /// --endpoint).
    #[arg(long, env = "PRESIGND_CA_CERT", global = true)]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) naming you (mTLS), with --client-key.
    #[arg(long, env = "PRESIGND_CLIENT_CERT", global = true)]
    pub(crate) client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, env = "PRESIGND_CLIENT_KEY", global = true)]
    pub(crate) client_key: Option<PathBuf>,
    /// The server name to verify presignd's certificate against (default: the
    /// endpoint's host).
    #[arg(long, env = "PRESIGND_TLS_SERVER_NAME", global = true)]
    pub(crate) server_name: Option<String>,
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{what}: reading {}", path.display()))
}

impl TlsArgs {
    pub(crate) fn client_config(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        if self.ca_cert.is_none() && self.client_cert.is_none() {
            return Ok(None);
        }
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &self.ca_cert {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca, "--ca-cert")?));
        }
        match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => {
                tls = tls.identity(Identity::from_pem(
                    read(c, "--client-cert")?,
                    read(k, "--client-key")?,
                ));
            }
            (None, None) => {}
            _ => bail!("set both --client-cert and --client-key"),
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(Some(tls))
    }
}
