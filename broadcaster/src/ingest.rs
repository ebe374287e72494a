//! MPEG-TS an application brings — read from an `AsyncRead`, or pushed a buffer at a time —
//! cut into signed chunks at its own frames and keyframes, with no GStreamer: what an app
//! with its own encoder, or a phone's hardware encoder, streams through.

use bytes::{Bytes, BytesMut};
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

/// Where the application's MPEG-TS comes from.
pub(crate) enum Input {
    /// Read from this, into that buffer, a read at a time.
    Reader(Box<dyn AsyncRead + Send + Unpin>, BytesMut),
    /// Pushed as buffers (`Broadcaster::push_ts`); ends when every sender is gone.
    Pushed(mpsc::Receiver<Bytes>),
}

impl Input {
    pub(crate) fn reader(reader: Box<dyn AsyncRead + Send + Unpin>) -> Self {
        Input::Reader(reader, BytesMut::new())
    }

    /// The next bytes, `None` at the end.
    async fn next(&mut self) -> Option<Result<Bytes, BroadcastError>> {
        match self {
            Input::Reader(reader, buf) => {
                // (Split off, not copied: the buffer is reused once the chunker let go of it.)
                buf.reserve(READ_SIZE);
                match reader.read_buf(buf).await {
                    Ok(0) => None,
                    Ok(_) => Some(Ok(buf.split().freeze())),
                    Err(e) => Some(Err(BroadcastError::Source(format!("cannot read the MPEG-TS: {e}")))),
                }
            }
            Input::Pushed(rx) => rx.recv().await.map(Ok),
        }
    }
}

/// Cuts what `input` gives until it ends or `stop`; then sends the end of the stream.
pub(crate) async fn run(
    mut input: Input,
    mut cut: Cut,
    tx: mpsc::Sender<Chunk>,
    health: std::sync::Arc<Health>,
    stop: CancellationToken,
) -> Result<(), BroadcastError> {
    health.set_media("input: MPEG-TS from the application, passed through");
    let mut keyframes = KeyframeWatch::new(cut.segment_ms());
    let result = loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            next = input.next() => next,
        };
        match next {
            None => break Ok(()),
            Some(Ok(data)) => {
                if !feed(&data, &mut cut, &mut keyframes, &tx, &health).await {
                    return Ok(());
                }
            }
            Some(Err(e)) => break Err(e),
        }
    };
    finish(cut, &tx).await;
    result
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
