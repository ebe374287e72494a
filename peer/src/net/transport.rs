//! The QUIC endpoint every shoal node uses: one UDP socket that both accepts and dials, a
//! throwaway self-signed certificate, and a client that accepts any certificate — peers
//! trust chunks by the broadcaster's signature, never by TLS names.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use shoal_proto::chunk::MAX_CHUNK_WIRE;

use shoal_core::limits::{IDLE_TIMEOUT, Limits};

/// Name the certificate is issued for and clients ask for; it carries no trust.
pub const SERVER_NAME: &str = "shoal";
/// Chunk streams a neighbour may have open towards us at once.
pub const MAX_INCOMING_CHUNK_STREAMS: u32 = 128;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How often an otherwise quiet connection sends a ping.
const KEEP_ALIVE: Duration = Duration::from_millis(250);

fn transport_config(limits: &Limits) -> Arc<quinn::TransportConfig> {
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
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("1 s fits a QUIC idle timeout")));
    Arc::new(t)
}

/// Binds `listen` and returns an endpoint that serves and dials shoal connections.
pub fn endpoint(listen: SocketAddr, limits: &Limits) -> anyhow::Result<quinn::Endpoint> {
    let cert =
        rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()]).context("generating a TLS certificate")?;
    let key = PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());

    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key.into())?;
    server_tls.alpn_protocols = vec![shoal_proto::ALPN.to_vec()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
    server.transport_config(transport_config(limits));

    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![shoal_proto::ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));
    client.transport_config(transport_config(limits));

    let socket = std::net::UdpSocket::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let mut endpoint = udp_endpoint(socket, server).with_context(|| format!("cannot start QUIC on {listen}"))?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Accepts any server certificate but still checks the handshake signature, so the
/// connection is encrypted to whoever holds the presented key.
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

#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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
