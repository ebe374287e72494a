//! A hostile neighbour for tests: joins a real peer over QUIC like any viewer, copies a real
//! chunk it is sent, and sends it back altered under a future sequence number.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use shoal_peer::link::{self, Identity};
use shoal_proto::chunk::MAX_CHUNK_WIRE;
use shoal_proto::{Chunk, NodeId, Ticket};

pub struct Outcome {
    /// Forged chunks written to the peer.
    pub sent: usize,
    /// How the peer ended the connection (QUIC application close code), if it did.
    pub closed_with: Option<u64>,
}

/// Connects to `target`, waits for one real chunk, sends `count` forgeries of it, and waits
/// up to `linger` for the peer to hang up.
pub async fn forge(ticket: &Ticket, target: SocketAddr, count: usize, linger: Duration) -> anyhow::Result<Outcome> {
    let endpoint = shoal_peer::transport::endpoint("127.0.0.1:0".parse()?)?;
    let conn = endpoint
        .connect(target, shoal_peer::transport::SERVER_NAME)?
        .await
        .context("connecting to the target peer")?;
    let me = Identity {
        node_id: NodeId([0xbd; 32]),
        stream_key: ticket.stream_key,
        listen: vec![],
    };
    let (_peer, mut send, _recv, _buf) = link::handshake(&conn, &me, true).await?;
    // Ask to be fed every stripe, like a viewer joining the trees.
    for stripe in 0..shoal_peer::state::Config::default().stripes {
        send.write_all(&shoal_proto::Message::Graft { stripe }.to_frame())
            .await?;
    }

    // Honest peers push us the stream: take one real chunk as a template.
    let real = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut recv = conn.accept_uni().await?;
            let bytes = recv.read_to_end(MAX_CHUNK_WIRE).await?;
            if let Ok(chunk) = Chunk::decode(&mut Bytes::from(bytes)) {
                return anyhow::Ok(chunk);
            }
        }
    })
    .await
    .context("the peer sent no chunk")??;

    let mut sent = 0;
    for i in 0..count {
        let mut forged = real.clone();
        // About two seconds ahead: the real chunk of that seq does not exist yet.
        forged.header.seq = real.header.seq + 60 + i as u64;
        let mut payload = forged.payload.to_vec();
        if let Some(byte) = payload.get_mut(200) {
            *byte ^= 0x55;
        }
        forged.payload = Bytes::from(payload);
        let Ok(mut send) = conn.open_uni().await else {
            break;
        };
        if send.write_all(&forged.to_bytes()).await.is_err() || send.finish().is_err() {
            break;
        }
        sent += 1;
    }
    let closed_with = match tokio::time::timeout(linger, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => Some(close.error_code.into_inner()),
        _ => None,
    };
    endpoint.close(0u32.into(), b"");
    Ok(Outcome { sent, closed_with })
}
