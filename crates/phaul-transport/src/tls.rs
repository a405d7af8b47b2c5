//! TLS for every channel: rustls with the ring provider, TLS 1.3.
//!
//! A service presents a certificate: by default a self-signed one made at
//! start-up. Clients do not need a CA: who the peer is comes from the shared
//! key proof, which is bound to the TLS session (see [`crate::auth`]), so a
//! certificate is accepted as long as the TLS handshake itself is valid.
//! A client may also pin the service's certificate by its SHA-256
//! fingerprint ([`crate::LinkConfig::pin`]); then any other certificate is
//! refused during the TLS handshake.

use std::sync::Arc;

use ring::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use crate::error::{Error, Result};

/// The ALPN protocol name of phaul links.
pub const ALPN: &[u8] = b"phaul/1";
/// The label of the keying material exported for the key proof.
pub(crate) const EXPORTER_LABEL: &[u8] = b"EXPORTER-phaul-link-auth";

fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    // AES-128-GCM first: memory pages are the bulk of what a link carries,
    // and it costs less CPU per byte than AES-256 (ring's default first
    // choice) while being TLS 1.3's mandatory suite. Both ends are phaul, so
    // the client's order decides.
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// A service's certificate and private key.
#[derive(Clone)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
    /// The rustls configuration, built once and shared by every clone.
    server: Arc<std::sync::OnceLock<Arc<ServerConfig>>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.fingerprint_hex())
    }
}

impl Identity {
    /// A new self-signed certificate (ECDSA P-256) for name `phaul`.
    pub fn self_signed() -> Result<Self> {
        let ck = rcgen::generate_simple_self_signed(vec!["phaul".to_string()])
            .map_err(|e| Error::Certificate(e.to_string()))?;
        Ok(Self {
            cert: ck.cert.der().clone(),
            key: Arc::new(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der())),
            server: Arc::default(),
        })
    }

    /// SHA-256 of the certificate (DER), to pin it on clients.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert)
    }

    /// [`Identity::fingerprint`] as lowercase hex.
    pub fn fingerprint_hex(&self) -> String {
        hex(&self.fingerprint())
    }

    pub(crate) fn server_config(&self) -> Result<Arc<ServerConfig>> {
        if let Some(c) = self.server.get() {
            return Ok(c.clone());
        }
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(self.server.get_or_init(|| Arc::new(cfg)).clone())
    }
}

pub(crate) fn client_config(pins: &[[u8; 32]]) -> Result<Arc<ClientConfig>> {
    let p = provider();
    let verifier = Verifier {
        pins: pins.to_vec(),
        algs: p.signature_verification_algorithms,
    };
    let mut cfg = ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

pub(crate) fn server_name() -> ServerName<'static> {
    ServerName::try_from("phaul").expect("a valid DNS name")
}

fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, cert.as_ref()).as_ref());
    out
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a 64-digit hex SHA-256 fingerprint (colons allowed).
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32]> {
    let digits: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
    let bad = || Error::Certificate(format!("{s:?} is not a SHA-256 fingerprint"));
    if digits.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Accepts the pinned certificates only, or (with no pins) any certificate
/// whose handshake signature is valid; peer identity then rests on the key
/// proof bound to this TLS session.
#[derive(Debug)]
struct Verifier {
    pins: Vec<[u8; 32]>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if !self.pins.is_empty() && !self.pins.contains(&fingerprint(end_entity)) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let id = Identity::self_signed().unwrap();
        let hex = id.fingerprint_hex();
        assert_eq!(parse_fingerprint(&hex).unwrap(), id.fingerprint());
        let colons: Vec<String> = hex
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        assert_eq!(
            parse_fingerprint(&colons.join(":")).unwrap(),
            id.fingerprint()
        );
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[tokio::test]
    async fn two_phaul_ends_agree_on_aes_128_gcm() {
        let id = Identity::self_signed().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(id.server_config().unwrap());
        let connector = tokio_rustls::TlsConnector::from(client_config(&[]).unwrap());
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (server, client) =
            tokio::join!(acceptor.accept(a), connector.connect(server_name(), b));
        let (server, client) = (server.unwrap(), client.unwrap());
        for suite in [
            server.get_ref().1.negotiated_cipher_suite(),
            client.get_ref().1.negotiated_cipher_suite(),
        ] {
            assert_eq!(
                suite.map(|s| s.suite()),
                Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
            );
        }
    }
}
