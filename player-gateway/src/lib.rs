//! Watch a shoal stream from code: a [`Viewer`] joins the stream's swarm by its ticket,
//! verifies and reassembles the chunks, and serves them as HLS (with LL-HLS parts) on
//! localhost, so any player — a `<video>` tag with hls.js, VLC, mpv, ExoPlayer, AVPlayer —
//! plays `playlist_url()`. An application can also mount [`Viewer::router`] under its own
//! axum server. The `shoal-gateway` binary is this, with flags and a status line.
//!
//! ```no_run
//! # async fn run(ticket: shoal_proto::Ticket) -> Result<(), shoal_gateway::ViewerError> {
//! let viewer = shoal_gateway::Viewer::builder(ticket).start().await?;
//! println!("play {}", viewer.playlist_url().expect("served on localhost"));
//! let mut events = viewer.events();
//! while let Some(event) = events.next().await {
//!     println!("{event:?}");
//! #   break;
//! }
//! viewer.shutdown().await;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]
mod assembler;
mod gateway;
mod http;
mod metrics;
mod packager;
mod playlist;
mod viewer;

pub use gateway::{GatewayStats as ViewerStats, SegmentStats, Segments};
pub use playlist::Latency;
pub use viewer::{Viewer, ViewerBuilder, ViewerError, ViewerEvent};
