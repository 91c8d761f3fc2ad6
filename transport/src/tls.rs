//! TLS 1.3 for both ends: the edge's identity (PEM files or self-signed), how the device
//! trusts it (CA file or pinned SHA-256 fingerprint), optional client certificates, and
//! the rustls configurations with ALPN `splitstream/1`.
//!
//! The crypto provider is rustls' `ring` provider, passed explicitly everywhere, so the
//! process-wide default provider is never consulted (or required).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::ClientAuth;
use crate::wire::ALPN;

/// The crypto provider used by both ends.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a DER certificate: what a device pins.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(cert: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, cert);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }
}

impl fmt::Display for Fingerprint {
    /// Colon-separated uppercase hex, as `openssl x509 -fingerprint -sha256` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A fingerprint string that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("not a SHA-256 fingerprint: expected 64 hex digits (colons optional), e.g. the line the edge prints at start")]
pub struct ParseFingerprintError;

impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits: Vec<u8> = s
            .trim()
            .trim_start_matches("sha256:")
            .bytes()
            .filter(|b| *b != b':')
            .collect();
        if digits.len() != 64 {
            return Err(ParseFingerprintError);
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let text = std::str::from_utf8(pair).map_err(|_| ParseFingerprintError)?;
            *o = u8::from_str_radix(text, 16).map_err(|_| ParseFingerprintError)?;
        }
        Ok(Self(out))
    }
}

/// Why certificates or keys could not be loaded or a TLS configuration built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A PEM file could not be read or parsed.
    #[error("cannot load {what} from {path}: {reason}")]
    Pem {
        /// What was being loaded.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
    /// A PEM file held no certificate.
    #[error("{path} contains no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// Self-signed certificate generation failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    /// rustls refused the certificate, key or verifier.
    #[error("invalid TLS setup: {0}")]
    Rustls(String),
}

/// The edge's certificate chain and private key.
#[derive(Debug)]
pub struct ServerIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for ServerIdentity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem_err = |reason: String| TlsConfigError::Pem {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsConfigError::Pem {
        what: "private key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl ServerIdentity {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1
    /// or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsConfigError> {
        Ok(Self {
            chain: load_certs(cert, "certificate chain")?,
            key: load_key(key)?,
        })
    }

    /// From DER certificate chain and key already in memory.
    pub fn from_der(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        Self { chain, key }
    }

    /// A fresh self-signed certificate (ECDSA P-256) for these DNS names or IP
    /// addresses. Devices must pin its [`fingerprint`](Self::fingerprint).
    pub fn self_signed(names: &[&str]) -> Result<Self, TlsConfigError> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsConfigError::Generate(e.to_string()))?;
        let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .map_err(|e| TlsConfigError::Generate(e.to_string()))?;
        Ok(Self {
            chain: vec![ck.cert.der().clone()],
            key,
        })
    }

    /// SHA-256 fingerprint of the leaf certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_der(self.chain.first().map(|c| c.as_ref()).unwrap_or_default())
    }

    /// The certificate chain as PEM (to hand to devices as a CA file, when self-signed).
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem_block("CERTIFICATE", c))
            .collect()
    }

    /// The certificate chain.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// A device's client certificate and key, for edges that require mTLS.
#[derive(Debug)]
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ClientIdentity {
    /// Loads a PEM certificate chain and key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsConfigError> {
        Ok(Self {
            chain: load_certs(cert, "client certificate chain")?,
            key: load_key(key)?,
        })
    }

    /// From DER certificate chain and key already in memory.
    pub fn from_der(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        Self { chain, key }
    }
}

/// How the device decides the edge is the edge.
#[derive(Clone, Debug)]
pub enum ServerTrust {
    /// Trust certificates chaining to one of the CA certificates in this PEM file; the
    /// certificate must name [`ClientConfig::server_name`](crate::ClientConfig).
    CaFile(PathBuf),
    /// Trust these CA certificates (DER).
    CaCerts(Vec<CertificateDer<'static>>),
    /// Trust exactly the certificate with this SHA-256 fingerprint (as the edge prints
    /// at start). Name and validity dates are not checked, like an SSH host key; the
    /// handshake signature still is, so the edge must hold the key.
    Pinned(Fingerprint),
    /// DEVELOPMENT ONLY: accept any certificate. Anyone on the path can read and change
    /// the bottleneck tensors and steal the device token. Logged as a warning on every
    /// connection.
    InsecureSkipVerifyDangerous,
}

/// Why the device refused the edge's certificate, recorded by our verifiers so the
/// connect error can say more than a TLS alert number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyFailure {
    /// The pinned fingerprint did not match.
    FingerprintMismatch {
        /// Pinned.
        expected: Fingerprint,
        /// Presented.
        actual: Fingerprint,
    },
    /// Chain, name or date verification against the CA failed.
    Untrusted(String),
}

/// Where a verifier leaves the reason it refused, for the connect error.
pub(crate) type FailureSlot = Arc<Mutex<Option<VerifyFailure>>>;

fn record(slot: &FailureSlot, failure: VerifyFailure) {
    if let Ok(mut s) = slot.lock() {
        *s = Some(failure);
    }
}

#[derive(Debug)]
struct PinnedVerifier {
    expected: Fingerprint,
    provider: Arc<CryptoProvider>,
    slot: FailureSlot,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = Fingerprint::of_der(end_entity);
        if actual == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            record(
                &self.slot,
                VerifyFailure::FingerprintMismatch {
                    expected: self.expected,
                    actual,
                },
            );
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Pinning replaces the chain check, never the proof of key possession.
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Wraps a verifier to record why it refused.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ServerCertVerifier>,
    slot: FailureSlot,
    dangerous_accept_all: bool,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.dangerous_accept_all {
            return Ok(ServerCertVerified::assertion());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .inspect_err(|e| record(&self.slot, VerifyFailure::Untrusted(e.to_string())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn roots(certs: &[CertificateDer<'static>]) -> Result<rustls::RootCertStore, TlsConfigError> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs {
        store
            .add(c.clone())
            .map_err(|e| TlsConfigError::Rustls(format!("CA certificate not usable: {e}")))?;
    }
    Ok(store)
}

fn rustls_err(e: rustls::Error) -> TlsConfigError {
    TlsConfigError::Rustls(e.to_string())
}

/// The edge's rustls configuration: TLS 1.3 only, ALPN `splitstream/1`, optional mTLS.
pub fn server_crypto(
    identity: &ServerIdentity,
    client_auth: &ClientAuth,
) -> Result<rustls::ServerConfig, TlsConfigError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?;
    let builder = match client_auth {
        ClientAuth::TokenOnly => builder.with_no_client_auth(),
        ClientAuth::RequireCertificate { ca_file } => {
            let roots = Arc::new(roots(&load_certs(ca_file, "client CA certificates")?)?);
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(rustls_err)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // Accept 0-RTT from devices resuming a session (QUIC allows only 0 or u32::MAX).
    // Safe to replay: the edge reads nothing before the handshake completes, and
    // rustls' default ticket store is single-use (docs/transport.md, "0-RTT").
    config.max_early_data_size = u32::MAX;
    Ok(config)
}

/// The device's rustls configuration, and the slot where its verifier records why it
/// refused a certificate.
pub(crate) fn client_crypto_with_slot(
    trust: &ServerTrust,
    identity: Option<&ClientIdentity>,
    alpn: &[u8],
) -> Result<(rustls::ClientConfig, FailureSlot), TlsConfigError> {
    let provider = provider();
    let slot: FailureSlot = Arc::default();
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        ServerTrust::Pinned(expected) => Arc::new(PinnedVerifier {
            expected: *expected,
            provider: provider.clone(),
            slot: slot.clone(),
        }),
        ServerTrust::CaFile(_) | ServerTrust::CaCerts(_) => {
            let certs = match trust {
                ServerTrust::CaFile(path) => load_certs(path, "CA certificates")?,
                ServerTrust::CaCerts(certs) => certs.clone(),
                _ => Vec::new(),
            };
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(&certs)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
            Arc::new(Recording {
                inner,
                slot: slot.clone(),
                dangerous_accept_all: false,
            })
        }
        ServerTrust::InsecureSkipVerifyDangerous => {
            tracing::warn!(
                "INSECURE: edge certificate verification is OFF (insecure_skip_verify_dangerous); \
                 anyone on the path can impersonate the edge and steal the device token"
            );
            Arc::new(Recording {
                inner: Arc::new(PinnedVerifier {
                    expected: Fingerprint([0; 32]),
                    provider: provider.clone(),
                    slot: slot.clone(),
                }),
                slot: slot.clone(),
                dangerous_accept_all: true,
            })
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(rustls_err)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok((config, slot))
}

/// The device's rustls configuration: TLS 1.3 only, ALPN `splitstream/1`, the chosen
/// trust, and an optional client certificate. (Also used by the TCP+TLS benchmark peer.)
pub fn client_crypto(
    trust: &ServerTrust,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    client_crypto_with_slot(trust, identity, ALPN).map(|(c, _)| c)
}

/// Like [`client_crypto`] but offering another ALPN; only for testing that an edge
/// refuses foreign protocols.
pub fn client_crypto_with_alpn(
    trust: &ServerTrust,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsConfigError> {
    client_crypto_with_slot(trust, None, alpn).map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trips_through_its_text_form() {
        let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
        let fp = id.fingerprint();
        let text = fp.to_string();
        assert_eq!(text.len(), 95);
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(
            text.replace(':', "")
                .to_lowercase()
                .parse::<Fingerprint>()
                .unwrap(),
            fp
        );
        assert!("abcd".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn self_signed_chain_pem_loads_back_with_the_same_fingerprint() {
        let id = ServerIdentity::self_signed(&["localhost", "127.0.0.1"]).unwrap();
        let pem = id.chain_pem();
        let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(Fingerprint::of_der(&certs[0]), id.fingerprint());
    }

    #[test]
    fn server_and_client_configs_speak_only_tls13_with_our_alpn() {
        let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
        let s = server_crypto(&id, &ClientAuth::TokenOnly).unwrap();
        assert_eq!(s.alpn_protocols, vec![ALPN.to_vec()]);
        let c = client_crypto(&ServerTrust::Pinned(id.fingerprint()), None).unwrap();
        assert_eq!(c.alpn_protocols, vec![ALPN.to_vec()]);
    }
}
