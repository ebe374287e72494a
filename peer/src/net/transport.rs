//! The QUIC endpoint every shoal node uses: one UDP socket that both accepts and dials, and
//! mutual TLS in which each side proves its node key. A node's certificate is self-signed by
//! its ed25519 node key; each side accepts any such certificate (there is no authority and
//! no name to check: chunks are trusted by the broadcaster's signature), and takes the key it
//! proved in the handshake as the other's node ID (libp2p's TLS handshake and iroh do the
//! same). A HELLO claiming another ID is refused (`link.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ed25519_dalek::SigningKey;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use shoal_proto::NodeId;
use shoal_proto::chunk::MAX_CHUNK_WIRE;

use shoal_core::limits::{IDLE_TIMEOUT, Limits};

/// Name the certificate is issued for and clients ask for; it carries no trust.
pub const SERVER_NAME: &str = "shoal";
/// Chunk streams a neighbour may have open towards us at once.
pub const MAX_INCOMING_CHUNK_STREAMS: u32 = 128;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Padding datagrams buffered from one neighbour before the oldest are dropped.
const PADDING_BUFFER: usize = 64 * 1024;
/// How often an otherwise quiet connection sends a ping.
const KEEP_ALIVE: Duration = Duration::from_millis(250);

/// What paces a node's connections: BBR each (tests and tools), or BBR each reporting to
/// the node's uplink controller (`uplink.rs`).
pub type Congestion = Arc<dyn quinn::congestion::ControllerFactory + Send + Sync>;

fn plain() -> Congestion {
    Arc::new(quinn::congestion::BbrConfig::default())
}

fn transport_config(limits: &Limits, congestion: Congestion) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Bounded buffers per connection, whatever a neighbour sends or fails to read: a chunk
    // stream carries one chunk, the control stream is read as it comes.
    let window = |bytes: u64| quinn::VarInt::from_u64(bytes).unwrap_or(quinn::VarInt::MAX);
    t.receive_window(window(limits.receive_window));
    t.stream_receive_window(window((4 * MAX_CHUNK_WIRE) as u64));
    t.send_window(limits.send_window);
    t.max_concurrent_uni_streams(MAX_INCOMING_CHUNK_STREAMS.into());
    t.max_concurrent_bidi_streams(2u32.into());
    // A neighbour killed without a goodbye must be noticed fast: when it fed a stripe (above
    // all the source's one child per stripe), everyone below stalls until then. Pings keep
    // every connection talking, so a second without a single packet back means gone (quinn
    // stretches the timeout to 3 probe timeouts on long round trips).
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // Loss-based control (Cubic) reads every random loss as congestion: at 2 % loss and
    // 50 ms RTT it caps a connection below a 2 Mbit/s stream. BBR paces by measured
    // bandwidth and round trip instead (measured with scripts/bench-swarm).
    t.congestion_controller_factory(congestion);
    // Acknowledge at once: a round trip then measures the path and its queues, not the
    // receiver's delayed ACK (up to 25 ms, which the uplink controller would take for a
    // queue on a quiet connection). ACK frequency extension; both sides are quinn.
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.max_ack_delay(Some(Duration::from_millis(1)));
    t.ack_frequency_config(Some(acks));
    // Datagrams carry only a neighbour's uplink probe (padding, read and dropped).
    t.datagram_receive_buffer_size(Some(PADDING_BUFFER));
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("1 s fits a QUIC idle timeout")));
    Arc::new(t)
}

/// Binds `listen` and returns an endpoint that serves and dials shoal connections as the
/// holder of `key`.
pub fn endpoint(listen: SocketAddr, limits: &Limits, key: &SigningKey) -> anyhow::Result<quinn::Endpoint> {
    endpoint_with(listen, limits, key, plain())
}

/// `endpoint`, its connections paced by `congestion`.
/// The UDP address could not be bound (taken, or not this machine's).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

pub fn endpoint_with(
    listen: SocketAddr,
    limits: &Limits,
    key: &SigningKey,
    congestion: Congestion,
) -> anyhow::Result<quinn::Endpoint> {
    let (cert, private) = certificate(key)?;
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(NodeCert(provider())))
        .with_single_cert(vec![cert], private)?;
    server_tls.alpn_protocols = vec![shoal_proto::ALPN.to_vec()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
    server.transport_config(transport_config(limits, congestion.clone()));

    let socket = std::net::UdpSocket::bind(listen).map_err(|source| ListenError { addr: listen, source })?;
    let mut endpoint = udp_endpoint(socket, server).with_context(|| format!("cannot start QUIC on {listen}"))?;
    endpoint.set_default_client_config(client_config_with(key, limits, congestion)?);
    Ok(endpoint)
}

/// How this node dials as the holder of `key` (the endpoint's default; a test dials as others).
pub fn client_config(key: &SigningKey, limits: &Limits) -> anyhow::Result<quinn::ClientConfig> {
    client_config_with(key, limits, plain())
}

fn client_config_with(
    key: &SigningKey,
    limits: &Limits,
    congestion: Congestion,
) -> anyhow::Result<quinn::ClientConfig> {
    let (cert, private) = certificate(key)?;
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeCert(provider())))
        .with_client_auth_cert(vec![cert], private)?;
    client_tls.alpn_protocols = vec![shoal_proto::ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));
    client.transport_config(transport_config(limits, congestion));
    Ok(client)
}

/// The node ID the other side of `conn` proved in the handshake: the ed25519 key of its
/// certificate.
pub fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let certs = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    ed25519_key_of(certs.first()?).map(NodeId)
}

/// DER of an ed25519 key in PKCS#8 v1 (RFC 8410): a fixed header, then the 32-byte seed.
const PKCS8_ED25519: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// DER of an ed25519 SubjectPublicKeyInfo (RFC 8410): a fixed header, then the 32-byte key.
const SPKI_ED25519: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// A self-signed certificate for `key`, and the key as TLS takes it.
fn certificate(key: &SigningKey) -> anyhow::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let mut pkcs8 = PKCS8_ED25519.to_vec();
    pkcs8.extend_from_slice(key.as_bytes());
    let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8);
    let pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
        .context("the node key as a TLS key")?;
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
        .and_then(|params| params.self_signed(&pair))
        .context("generating a TLS certificate")?;
    Ok((cert.der().clone(), pkcs8.into()))
}

/// The ed25519 public key a certificate carries, from its parsed SubjectPublicKeyInfo (not a
/// search of its bytes: a crafted certificate may carry another key elsewhere).
fn ed25519_key_of(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let key = spki.as_ref().strip_prefix(&SPKI_ED25519[..])?;
    key.try_into().ok()
}

/// The endpoint on its socket (behind the benchmarks' delay and loss emulation when asked).
fn udp_endpoint(socket: std::net::UdpSocket, server: quinn::ServerConfig) -> anyhow::Result<quinn::Endpoint> {
    let runtime = Arc::new(quinn::TokioRuntime);
    #[cfg(feature = "netem")]
    if let Some(netem) = super::netem::Netem::from_env()? {
        use quinn::Runtime;
        tracing::warn!(
            ?netem,
            "emulating delay and loss on this node's socket (benchmarks only)"
        );
        let socket = Arc::new(super::netem::Socket::new(runtime.wrap_udp_socket(socket)?, netem));
        return Ok(quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )?);
    }
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )?)
}

/// Accepts a certificate that carries an ed25519 key, and a handshake signed by that key
/// (ed25519 only): the connection is then with whoever holds the key, whatever else the
/// certificate says.
#[derive(Debug)]
struct NodeCert(Arc<CryptoProvider>);

impl NodeCert {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match ed25519_key_of(end_entity) {
            Some(_) => Ok(()),
            None => Err(rustls::Error::InvalidCertificate(CertificateError::BadEncoding)),
        }
    }

    /// QUIC is TLS 1.3 only (and the configs offer nothing else).
    fn tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
}

impl ServerCertVerifier for NodeCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        NodeCert::tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for NodeCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        NodeCert::tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Addresses to put in a ticket for a node bound to `local`: itself if specific; otherwise
/// this machine's primary address (the one its default route uses) and loopback.
pub fn advertised_addrs(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let mut out = Vec::new();
    // Connecting a UDP socket sends nothing; it only asks the kernel which source it would use.
    let primary =
        std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.connect("192.0.2.1:9").and_then(|_| s.local_addr()));
    if let Ok(addr) = primary {
        out.push(SocketAddr::new(addr.ip(), local.port()));
    }
    out.push(SocketAddr::from(([127, 0, 0, 1], local.port())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(key: &SigningKey) -> NodeId {
        NodeId(key.verifying_key().to_bytes())
    }

    #[test]
    fn a_certificate_carries_the_node_key_and_only_ed25519_counts() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let (cert, _) = certificate(&key).unwrap();
        assert_eq!(ed25519_key_of(&cert).map(NodeId), Some(id_of(&key)));
        // Another kind of key (rcgen's default, ECDSA P-256) proves no node ID.
        let other = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()]).unwrap();
        assert_eq!(ed25519_key_of(other.cert.der()), None);
        assert_eq!(
            ed25519_key_of(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])),
            None
        );
    }

    #[tokio::test]
    async fn both_sides_of_a_connection_learn_the_key_the_other_proved() {
        let limits = Limits::default();
        let (a, b) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
        let server = endpoint("127.0.0.1:0".parse().unwrap(), &limits, &a).unwrap();
        let client = endpoint("127.0.0.1:0".parse().unwrap(), &limits, &b).unwrap();
        let addr = server.local_addr().unwrap();
        let accepted = tokio::spawn(async move { server.accept().await.unwrap().await.unwrap() });
        let dialled = client.connect(addr, SERVER_NAME).unwrap().await.unwrap();
        let accepted = accepted.await.unwrap();
        assert_eq!(peer_node_id(&dialled), Some(id_of(&a)));
        assert_eq!(peer_node_id(&accepted), Some(id_of(&b)));
    }
}
