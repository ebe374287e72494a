//! MPEG-TS an application brings — read from an `AsyncRead`, or pushed a buffer at a time —
//! cut into signed chunks at its own frames and keyframes, with no GStreamer: what an app
//! with its own encoder, or a phone's hardware encoder, streams through.

use bytes::Bytes;
use shoal_peer::net::stats::now_us;
use shoal_proto::{Chunk, ChunkFlags};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broadcast::{BroadcastError, Cut};
use crate::health::Health;
use crate::keyframes::KeyframeWatch;

/// How much is read at once.
const READ_SIZE: usize = 64 * 1024;

/// Cuts what `reader` gives until it ends or `stop`; then sends the end of the stream.
pub(crate) async fn read(
    mut reader: Box<dyn AsyncRead + Send + Unpin>,
    mut cut: Cut,
    tx: mpsc::Sender<Chunk>,
    health: std::sync::Arc<Health>,
    stop: CancellationToken,
) -> Result<(), BroadcastError> {
    health.set_media("input: MPEG-TS from the application, passed through");
    let mut keyframes = KeyframeWatch::new(cut.segment_ms());
    let mut buf = vec![0u8; READ_SIZE];
    let result = loop {
        let n = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            n = reader.read(&mut buf) => n,
        };
        match n {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if !feed(&buf[..n], &mut cut, &mut keyframes, &tx, &health).await {
                    return Ok(());
                }
            }
            Err(e) => break Err(BroadcastError::Source(format!("cannot read the MPEG-TS: {e}"))),
        }
    };
    finish(cut, &tx).await;
    result
}

/// Cuts what is pushed until the pushing stops or `stop`; then sends the end of the stream.
pub(crate) async fn pushed(
    mut rx: mpsc::Receiver<Bytes>,
    mut cut: Cut,
    tx: mpsc::Sender<Chunk>,
    health: std::sync::Arc<Health>,
    stop: CancellationToken,
) -> Result<(), BroadcastError> {
    health.set_media("input: MPEG-TS from the application, passed through");
    let mut keyframes = KeyframeWatch::new(cut.segment_ms());
    loop {
        let data = tokio::select! {
            _ = stop.cancelled() => break,
            data = rx.recv() => data,
        };
        let Some(data) = data else { break };
        if !feed(&data, &mut cut, &mut keyframes, &tx, &health).await {
            return Ok(());
        }
    }
    finish(cut, &tx).await;
    Ok(())
}

/// Cuts, signs and sends; false once nobody takes chunks any more.
async fn feed(
    data: &[u8],
    cut: &mut Cut,
    keyframes: &mut KeyframeWatch,
    tx: &mpsc::Sender<Chunk>,
    health: &Health,
) -> bool {
    health.media_arrived(None);
    for (header, payload) in cut.chunker.push(data, now_us()) {
        if header.flags.has(ChunkFlags::SEGMENT_START) {
            keyframes.segment_started(header.timestamp_us);
        }
        if let Some(chunk) = cut.sign(header, payload)
            && tx.send(chunk).await.is_err()
        {
            return false;
        }
    }
    true
}

async fn finish(mut cut: Cut, tx: &mpsc::Sender<Chunk>) {
    let (header, payload) = cut.chunker.finish(now_us());
    if let Some(chunk) = cut.sign(header, payload) {
        let _ = tx.send(chunk).await;
    }
}
