//! # shoal: peer-to-peer live streaming, as a library
//!
//! One machine streams a live show; thousands watch; the streaming machine uploads about one
//! copy of the stream however many watch, because viewers relay the freshest chunks to each
//! other over QUIC. Every chunk is signed by the stream's key and verified before anyone
//! stores or passes it on. This crate is what the `shoal-broadcaster`, `shoal-gateway` and
//! `shoal-peer` programs are built on:
//!
//! - a [`Viewer`] joins a stream by its [`Ticket`] and serves it as HLS on localhost — give
//!   [`Viewer::playlist_url`] to any player (hls.js, ExoPlayer, AVPlayer, VLC, mpv), or mount
//!   [`Viewer::router`] under your own axum server;
//! - a [`Broadcaster`] streams MPEG-TS your app's encoder makes ([`Source::MpegTs`],
//!   [`Source::Push`]), or — with the `gstreamer` feature — a camera, the screen, a file, OBS;
//! - a [`Relay`] helps a stream along without playing it (a server, a set-top box).
//!
//! Each is started from a builder and stopped with `shutdown().await` (dropping it stops it
//! too); each has typed `stats()` and a bounded stream of `events()`. The library installs no
//! logger, catches no signal and never exits the process: that is the application's.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let ticket: shoal::Ticket = "shoal1…".parse()?;
//! let viewer = shoal::Viewer::builder(ticket).start().await?;
//! println!("open {}", viewer.playlist_url().expect("served on 127.0.0.1"));
//! let mut events = viewer.events();
//! while let Some(event) = events.next().await {
//!     if let shoal::ViewerEvent::Ended = event {
//!         break;
//!     }
//! }
//! viewer.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Features: `gstreamer` (off) adds `media` sources to the broadcaster and needs the
//! GStreamer libraries; without it nothing here needs a system library.

#![warn(missing_docs)]

#[cfg(feature = "gstreamer")]
pub use shoal_broadcaster::media;
pub use shoal_broadcaster::{
    BroadcastError, Broadcaster, BroadcasterBuilder, BroadcasterEvent, BroadcasterStats, Source, key,
};
pub use shoal_gateway::{
    Latency, SegmentStats, Segments, Viewer, ViewerBuilder, ViewerError, ViewerEvent, ViewerStats,
};
pub use shoal_peer::events::{Events, NodeEvent};
pub use shoal_peer::net::stats::Snapshot;
pub use shoal_peer::relay::{Relay, RelayBuilder};
pub use shoal_peer::swarm::{Dht, SwarmError, SwarmOptions, UploadMode};
pub use shoal_proto::{NodeId, Ticket};
