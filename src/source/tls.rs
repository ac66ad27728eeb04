//! TLS for the query and COPY connections, with libpq's meaning of `sslmode` and
//! `sslrootcert` in `source.url` (managed PostgreSQL such as RDS 15+ refuses unencrypted
//! connections by default). The replication connection gets the same URL; pg_walstream
//! reads these parameters itself.
//!
//! | sslmode | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | no | |
//! | `allow`, `prefer` (default) | when the server offers it | no |
//! | `require` | yes | no; against `sslrootcert` when one is given (as libpq) |
//! | `verify-ca` | yes | chain against `sslrootcert` |
//! | `verify-full` | yes | chain and host name |
//!
//! `sslrootcert` is a PEM file, or `system` for the operating system's trust store (then
//! `verify-full` is the default, as in libpq 16).

use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::SourceError;
use crate::config::SecretUrl;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// How to connect: tokio-postgres settings and, unless TLS is disabled, the connector.
pub struct Connect {
    /// Parsed connection settings (TLS parameters translated for tokio-postgres).
    pub config: tokio_postgres::Config,
    /// The TLS connector; `None` for `sslmode=disable`.
    pub tls: Option<MakeRustlsConnect>,
}

fn bad(url: &SecretUrl, message: impl Into<String>) -> SourceError {
    SourceError::Connect {
        target: super::target(url),
        message: message.into(),
        retry: false,
    }
}

/// Idle time before TCP keepalive probes, unless `source.url` sets `keepalives_idle`.
pub const KEEPALIVES_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// How long sent data may stay unacknowledged, unless `source.url` sets `tcp_user_timeout`.
pub const TCP_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Parses `source.url`, taking `sslmode` and `sslrootcert` out for rustls.
pub fn prepare(url: &SecretUrl) -> Result<Connect, SourceError> {
    let mut parsed = url::Url::parse(url.expose())
        .map_err(|e| bad(url, format!("source.url is not a valid URL: {e}")))?;
    let mut mode = None;
    let mut rootcert = None;
    let mut rest = Vec::new();
    for (k, v) in parsed.query_pairs() {
        match &*k {
            "sslmode" => mode = Some(v.into_owned()),
            "sslrootcert" => rootcert = Some(v.into_owned()),
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    let mode = match mode.as_deref() {
        None if rootcert.as_deref() == Some("system") => SslMode::VerifyFull,
        None | Some("prefer") | Some("allow") => SslMode::Prefer,
        Some("disable") => SslMode::Disable,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some(other) => {
            return Err(bad(
                url,
                format!("sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"),
            ))
        }
    };
    if rootcert.as_deref() == Some("system") && mode != SslMode::VerifyFull {
        return Err(bad(
            url,
            "sslrootcert=system needs sslmode=verify-full (as in libpq): a system-trusted certificate says nothing without the host name check",
        ));
    }
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && rootcert.is_none() {
        return Err(bad(
            url,
            format!("sslmode={} needs sslrootcert=<CA bundle PEM> (for RDS, the region's bundle from AWS) or sslrootcert=system", mode_name(mode)),
        ));
    }
    let pg_mode = match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        _ => "require",
    };
    {
        let mut q = parsed.query_pairs_mut();
        q.clear();
        for (k, v) in &rest {
            q.append_pair(k, v);
        }
        q.append_pair("sslmode", pg_mode);
    }
    let mut config = tokio_postgres::Config::from_str(parsed.as_str())
        .map_err(|e| bad(url, format!("source.url: {e}")))?;
    // A server that vanished (a partition, a failover) is noticed within about a minute
    // instead of the kernel's two hours; settings in the URL win.
    let set = |key: &str| rest.iter().any(|(k, _)| k == key);
    if !set("keepalives_idle") {
        config.keepalives_idle(KEEPALIVES_IDLE);
    }
    if !set("tcp_user_timeout") {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if mode == SslMode::Disable {
        return Ok(Connect { config, tls: None });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // libpq checks nothing under `prefer`, even with a root certificate.
    let roots = match rootcert.as_deref().filter(|_| mode != SslMode::Prefer) {
        None => None,
        Some("system") => Some(system_roots(url)?),
        Some(path) => Some(file_roots(url, path)?),
    };
    let chain = match roots {
        Some(roots) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| bad(url, format!("TLS setup: {e}")))?,
        ),
        None => None,
    };
    let verifier = Arc::new(Verifier {
        chain,
        check_name: mode == SslMode::VerifyFull,
        provider: provider.clone(),
    });
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(url, format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Connect {
        config,
        tls: Some(MakeRustlsConnect::new(tls)),
    })
}

fn mode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

fn file_roots(url: &SecretUrl, path: &str) -> Result<RootCertStore, SourceError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| bad(url, format!("sslrootcert {path}: {e}")))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad(
            url,
            format!("sslrootcert {path} holds no usable CA certificate (expected PEM)"),
        ));
    }
    Ok(roots)
}

fn system_roots(url: &SecretUrl) -> Result<RootCertStore, SourceError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(bad(
            url,
            "sslrootcert=system: the system trust store has no certificates",
        ));
    }
    Ok(roots)
}

/// Checks the server's certificate as the `sslmode` asks: not at all (`prefer`,
/// `require` without a root certificate), its chain only (`verify-ca`), or its chain
/// and name (`verify-full`). Handshake signatures are always checked.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> SecretUrl {
        SecretUrl::new(s)
    }

    #[test]
    fn sslmode_is_translated_for_tokio_postgres() {
        let c = prepare(&url(
            "postgres://u:p@h:5/db?sslmode=disable&application_name=x",
        ))
        .expect("disable");
        assert!(c.tls.is_none());
        assert_eq!(
            c.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        assert_eq!(c.config.get_application_name(), Some("x"));
        let c = prepare(&url("postgres://u@h/db")).expect("default");
        assert!(c.tls.is_some());
        assert_eq!(
            c.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
        let c = prepare(&url("postgres://u@h/db?sslmode=require")).expect("require");
        assert_eq!(
            c.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn verification_needs_a_root_certificate() {
        for mode in ["verify-ca", "verify-full"] {
            let e = prepare(&url(&format!("postgres://u:secret@h/db?sslmode={mode}")))
                .err()
                .expect("error")
                .to_string();
            assert!(e.contains("sslrootcert"), "{e}");
            assert!(!e.contains("secret"), "{e}");
        }
        let e = prepare(&url("postgres://u@h/db?sslmode=require&sslrootcert=system"))
            .err()
            .expect("error")
            .to_string();
        assert!(e.contains("verify-full"), "{e}");
        let e = prepare(&url(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem",
        ))
        .err()
        .expect("error")
        .to_string();
        assert!(e.contains("/nonexistent.pem"), "{e}");
        let e = prepare(&url("postgres://u@h/db?sslmode=bogus"))
            .err()
            .expect("error")
            .to_string();
        assert!(e.contains("sslmode=bogus"), "{e}");
    }
}
