//! What a running node tells whoever listens, as it happens: a bounded broadcast, so a slow
//! listener misses events (and is told how many) instead of holding the node back.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::broadcast;
use tokio_util::sync::ReusableBoxFuture;

/// Events buffered for each listener before the oldest are dropped for it.
pub const EVENTS_QUEUE: usize = 256;

/// An event type a listener can be told it missed some of.
pub trait Lagging: Clone + Send + 'static {
    /// The event saying `missed` events were dropped because the listener fell behind.
    fn lagged(missed: u64) -> Self;
}

/// A listener's stream of events: `next().await`, or any `futures` `Stream` combinator.
/// Ends once what sends them has stopped. Only events after it was made are seen.
pub struct Events<E> {
    next: ReusableBoxFuture<'static, (Option<E>, broadcast::Receiver<E>)>,
}

async fn receive<E: Lagging>(mut rx: broadcast::Receiver<E>) -> (Option<E>, broadcast::Receiver<E>) {
    let event = match rx.recv().await {
        Ok(event) => Some(event),
        Err(broadcast::error::RecvError::Lagged(missed)) => Some(E::lagged(missed)),
        Err(broadcast::error::RecvError::Closed) => None,
    };
    (event, rx)
}

impl<E: Lagging> Events<E> {
    /// Listens on `rx`.
    pub fn new(rx: broadcast::Receiver<E>) -> Self {
        Events {
            next: ReusableBoxFuture::new(receive(rx)),
        }
    }

    /// The next event, or `None` once the sender has stopped.
    pub async fn next(&mut self) -> Option<E> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<E>> {
        let (event, rx) = std::task::ready!(self.next.poll(cx));
        self.next.set(receive(rx));
        Poll::Ready(event)
    }
}

impl<E: Lagging> futures_core::Stream for Events<E> {
    type Item = E;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<E>> {
        self.get_mut().poll_event(cx)
    }
}

impl<E> std::fmt::Debug for Events<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

/// A node's own events.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A connection to a neighbour is up (handshake and HELLO done).
    NeighbourUp {
        /// The key the neighbour proved in the handshake.
        node_id: shoal_proto::NodeId,
        /// Where it is.
        addr: std::net::SocketAddr,
    },
    /// A neighbour is gone, and why.
    NeighbourDown {
        /// The key the neighbour proved in the handshake.
        node_id: shoal_proto::NodeId,
        /// The reason this node hung up (`goodbye`, `banned`, `full`…), or what closed the
        /// connection.
        why: String,
    },
    /// This listener fell behind and missed this many events.
    Lagged {
        /// Events dropped before this listener read them.
        missed: u64,
    },
}

/// An event type that tells its node's neighbours coming and going (a viewer's, a
/// broadcaster's).
pub trait NeighbourEvents: Sized {
    /// The event for `event`, if it is one this type tells.
    fn from_node(event: NodeEvent) -> Option<Self>;
}

/// Passes a node's events on as `E`s until the node stops. (Missed ones are this
/// forwarder's to count, not the listener's.)
pub async fn forward<E: NeighbourEvents>(mut from: Events<NodeEvent>, to: broadcast::Sender<E>) {
    while let Some(event) = from.next().await {
        if let Some(event) = E::from_node(event) {
            let _ = to.send(event);
        }
    }
}

impl Lagging for NodeEvent {
    fn lagged(missed: u64) -> Self {
        NodeEvent::Lagged { missed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_that_falls_behind_is_told_what_it_missed() {
        let (tx, rx) = broadcast::channel(2);
        let mut events = Events::new(rx);
        let down = |n: u8| NodeEvent::NeighbourDown {
            node_id: shoal_proto::NodeId([n; 32]),
            why: format!("gone {n}"),
        };
        for n in 0..5 {
            let _ = tx.send(down(n));
        }
        // Three of five dropped for it, then the two it kept.
        assert_eq!(events.next().await, Some(NodeEvent::Lagged { missed: 3 }));
        assert_eq!(events.next().await, Some(down(3)));
        assert_eq!(events.next().await, Some(down(4)));
        drop(tx);
        assert_eq!(events.next().await, None, "ends when the sender stops");
    }
}
