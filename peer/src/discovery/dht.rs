//! Finding a swarm through the BitTorrent Mainline DHT (`--dht`): the broadcaster publishes
//! where its swarm can be joined as a BEP 44 mutable item signed by the stream key itself, so
//! only the broadcaster can write it and anyone holding the ticket — even one that lists no
//! address, just the key and the name — can read it and check the signature.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ed25519_dalek::{SigningKey, VerifyingKey};
use mainline::async_dht::AsyncDht;
use mainline::{Dht, MutableItem};
use shoal_proto::codec::{get_addrs, put_addrs};
use tokio_util::sync::CancellationToken;

/// Namespaces shoal's items under a stream key (BEP 44 salt).
const SALT: &[u8] = b"shoal/1";
/// Addresses published at most (the item's value stays far below BEP 44's 1000 bytes).
const MAX_PUBLISHED: usize = 8;
/// Items live about two hours on DHT nodes: publish again well before.
const REPUBLISH_EVERY: Duration = Duration::from_secs(10 * 60);
/// Until something is found, look again this often; then now and then for changes.
const LOOKUP_RETRY: Duration = Duration::from_secs(3);
const LOOKUP_EVERY: Duration = Duration::from_secs(5 * 60);
/// How often the broadcaster checks whether its public addresses changed.
const CHANGE_CHECK: Duration = Duration::from_secs(15);

/// Joins the DHT: the public one, or the nodes given (a private or test network).
pub fn join(bootstrap: &[String]) -> anyhow::Result<AsyncDht> {
    let mut builder = Dht::builder();
    if !bootstrap.is_empty() {
        builder.bootstrap(bootstrap);
    }
    Ok(builder.build().context("cannot start the DHT node")?.as_async())
}

/// The item's value: the addresses, in the ticket's encoding.
pub fn encode(addrs: &[SocketAddr]) -> Vec<u8> {
    let mut out = Vec::new();
    put_addrs(&mut out, addrs, MAX_PUBLISHED);
    out
}

pub fn decode(mut value: &[u8]) -> anyhow::Result<Vec<SocketAddr>> {
    get_addrs(&mut value, MAX_PUBLISHED).map_err(|e| anyhow::anyhow!("a malformed DHT item: {e}"))
}

/// Publishes `addrs`, and the public addresses `public` reports once neighbours tell them,
/// under the stream key until cancelled (the broadcaster).
pub async fn publish(
    dht: AsyncDht,
    key: SigningKey,
    addrs: Vec<SocketAddr>,
    public: impl Fn() -> Vec<SocketAddr> + Send,
    cancel: CancellationToken,
) {
    let mut published: Option<(Vec<SocketAddr>, tokio::time::Instant)> = None;
    loop {
        // Public addresses first: they are what viewers elsewhere can reach.
        let mut all = public();
        all.extend(addrs.iter().filter(|a| !all.contains(a)).copied().collect::<Vec<_>>());
        let due = published
            .as_ref()
            .is_none_or(|(before, at)| *before != all || at.elapsed() >= REPUBLISH_EVERY);
        if !due {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(CHANGE_CHECK) => continue,
            }
        }
        let value = encode(&all);
        // Seconds since 1970 always grow: a restarted broadcaster's item replaces the old one.
        let seq = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let item = MutableItem::new(key.clone(), &value, seq, Some(SALT));
        let wait = match dht.put_mutable(item, None).await {
            Ok(outcome) => {
                tracing::info!(
                    addresses = ?all,
                    stored_on = outcome.stored_at,
                    "published the swarm's addresses on the DHT"
                );
                published = Some((all, tokio::time::Instant::now()));
                CHANGE_CHECK
            }
            Err(e) => {
                tracing::warn!("cannot publish on the DHT yet: {e}");
                LOOKUP_RETRY
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Looks the stream up until cancelled, handing every new set of addresses to `found`.
pub async fn follow(
    dht: AsyncDht,
    stream_key: VerifyingKey,
    found: impl Fn(Vec<SocketAddr>) + Send,
    cancel: CancellationToken,
) {
    let mut last: Option<i64> = None;
    loop {
        // mainline checks each item's signature against the key before handing it over.
        let item = dht.get_mutable_most_recent(stream_key.as_bytes(), Some(SALT)).await;
        let wait = match item {
            Some(item) if last.is_none_or(|seq| item.seq() > seq) => match decode(item.value()) {
                Ok(addrs) => {
                    tracing::info!(?addrs, "found the swarm on the DHT");
                    last = Some(item.seq());
                    found(addrs);
                    LOOKUP_EVERY
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    LOOKUP_EVERY
                }
            },
            Some(_) => LOOKUP_EVERY,
            None => {
                tracing::debug!("the stream is not on the DHT yet");
                if last.is_some() { LOOKUP_EVERY } else { LOOKUP_RETRY }
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_garbage_is_refused() {
        let addrs: Vec<SocketAddr> = vec![
            "198.18.0.10:7000".parse().unwrap(),
            "[2001:db8::1]:7001".parse().unwrap(),
        ];
        assert_eq!(decode(&encode(&addrs)).unwrap(), addrs);
        assert!(decode(&[200, 1, 2]).is_err());
    }
}
