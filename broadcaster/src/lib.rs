//! Broadcast a live stream to a shoal swarm from code: a [`Broadcaster`] cuts MPEG-TS into
//! chunks at its frames and keyframes, signs each with the stream key, and seeds the swarm;
//! viewers join with its [`ticket`](Broadcaster::ticket). The source is MPEG-TS the
//! application brings (an `AsyncRead`, or buffers it pushes) — no system library needed —
//! or, with the `gstreamer` feature (on by default), anything the `shoal-broadcaster` binary
//! streams: a test picture, a file, OBS over SRT or UDP, the screen, a camera.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use shoal_broadcaster::{Broadcaster, Source, key};
//!
//! let key = key::load_or_create(std::path::Path::new("stream.key"))?;
//! let broadcaster = Broadcaster::builder(key).name("Friday concert").source(Source::Push).start().await?;
//! println!("share this ticket: {}", broadcaster.ticket());
//! // From the app's own encoder, as it produces MPEG-TS (H.264 + AAC, in real time):
//! # let ts = bytes::Bytes::new();
//! broadcaster.push_ts(ts).await?;
//! // ...
//! broadcaster.shutdown().await;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]
mod broadcast;
mod chunker;
mod health;
mod ingest;
pub mod key;
mod keyframes;
mod recorder;
mod ticket;

#[cfg(feature = "gstreamer")]
mod encoding;
#[cfg(feature = "gstreamer")]
pub mod media;
#[cfg(feature = "gstreamer")]
mod pipeline;
#[cfg(feature = "gstreamer")]
mod source;

pub use broadcast::{BroadcastError, Broadcaster, BroadcasterBuilder, BroadcasterEvent, BroadcasterStats, Source};
