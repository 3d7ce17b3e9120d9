//! The relaying side of the control thread: pulling a remote stream to the
//! shard that wants it, splicing its snapshot and live subject (see
//! `super::super::splice`), and ending it.

use super::*;
use crate::cluster::splice::Splice;

impl<N: Nats> Control<N> {
    /// Starts relaying `key` if it is wanted, published on another node and
    /// not relayed yet. (An entry whose node is gone is left to expire: a
    /// re-publish anywhere replaces it at once, see `register`.)
    pub(super) fn try_pull(self: &Rc<Self>, key: StreamKey) {
        if self.relays.borrow().contains_key(&key) || !self.connected() {
            return;
        }
        let Some(shard) = self.wanted.borrow().get(&key).map(|w| w.shard) else {
            return;
        };
        let generation = self.next_generation.get() + 1;
        self.next_generation.set(generation);
        let (stop_tx, stop_rx) = oneshot::channel();
        self.relays.borrow_mut().insert(
            key.clone(),
            Relay {
                generation,
                stop: Some(stop_tx),
            },
        );
        let c = self.clone();
        tokio::task::spawn_local(async move {
            if let Ok(Some((reg, _))) = c.entry(&key).await {
                if reg.node != c.s.node_id {
                    c.relay(&key, &reg.node, shard, stop_rx).await;
                }
            }
            let mut relays = c.relays.borrow_mut();
            if relays.get(&key).is_some_and(|r| r.generation == generation) {
                relays.remove(&key);
            }
        });
    }

    pub(super) async fn attach(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<bool, async_nats::RequestErrorKind> {
        let body = serde_json::to_vec(&AttachRequest {
            key: key.to_owned(),
            node: self.s.node_id.clone(),
        })
        .unwrap_or_default();
        let subject = format!("trib.attach.{}", wire::token(owner));
        match self.client.request(subject, body.into()).await {
            Ok(msg) => Ok(serde_json::from_slice::<AttachReply>(&msg.payload)
                .map(|r| r.ok)
                .unwrap_or(false)),
            Err(e) => Err(e),
        }
    }

    /// Relays `key` from `owner` to `shard` until the stream ends, the
    /// owner stops answering, or the shard releases it.
    pub(super) async fn relay(
        &self,
        key: &StreamKey,
        owner: &str,
        shard: usize,
        mut stop: oneshot::Receiver<()>,
    ) {
        let subject = format!("trib.media.{}.{}", wire::token(owner), wire::token(key));
        let Ok(mut live) = self.client.subscribe(subject).await else {
            return;
        };
        if self.client.flush().await.is_err() {
            return;
        }
        if !matches!(self.attach(owner, key).await, Ok(true)) {
            return;
        }
        let t0 = Instant::now();
        let Some((messages, last)) = self.fetch_snapshot(owner, key).await else {
            return;
        };
        let micros = t0.elapsed().as_micros() as u64;
        count(&self.stats.snapshots);
        self.stats
            .snapshot_micros
            .fetch_add(micros, Ordering::Relaxed);
        self.stats
            .snapshot_max_micros
            .fetch_max(micros, Ordering::Relaxed);
        // Released while attaching or fetching: do not start it.
        if !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            return;
        }
        let start = ShardCommand::RelayStart {
            key: key.clone(),
            messages,
        };
        if self.shards[shard].send(start).await.is_err() {
            return;
        }
        self.stats.relayed_streams.fetch_add(1, Ordering::Relaxed);
        tracing::info!(stream = %crate::protocol::server::redact(key), "relaying from node {owner}");
        let mut splice = Splice::new(last);
        let mut joiner = Joiner::new(self.s.max_message_len);
        let mut renew = tokio::time::interval(ATTACH_RENEW);
        renew.tick().await;
        let mut missed_renewals = 0;
        let ended = loop {
            tokio::select! {
                _ = &mut stop => break false,
                msg = live.next() => {
                    let Some(msg) = msg else { break true };
                    count(&self.stats.nats_messages_in);
                    self.stats.nats_bytes_in.fetch_add(msg.payload.len() as u64, Ordering::Relaxed);
                    match joiner.push(msg.payload) {
                        Ok(Some(Frame::Media { seq, message })) => {
                            let step = splice.on_media(seq, &message);
                            if step.restart {
                                // A new publisher on the owner node.
                                let cmd = ShardCommand::RelayRestart { key: key.clone() };
                                if self.shards[shard].send(cmd).await.is_err() {
                                    break false;
                                }
                            }
                            if step.gap {
                                count(&self.stats.relay_gaps);
                            }
                            if !step.deliver {
                                continue;
                            }
                            let cmd = ShardCommand::RelayMedia { key: key.clone(), message };
                            if self.shards[shard].try_send(cmd).is_err() {
                                count(&self.stats.relay_gaps);
                                splice.lost();
                            }
                        }
                        Ok(Some(Frame::End)) => break true,
                        Ok(_) => {}
                        Err(_) => {
                            count(&self.stats.relay_gaps);
                            splice.lost();
                        }
                    }
                }
                _ = renew.tick() => {
                    match self.attach(owner, key).await {
                        Ok(true) => missed_renewals = 0,
                        // The owner answers that the stream is gone.
                        Ok(false) => break true,
                        // Nobody listens on its subject (the node is gone,
                        // or it is reconnecting to another NATS server), or
                        // no answer in time: gone after a few in a row.
                        Err(_) => {
                            missed_renewals += 1;
                            if missed_renewals >= MAX_MISSED_RENEWALS {
                                break true;
                            }
                        }
                    }
                }
            }
        };
        self.stats.relayed_streams.fetch_sub(1, Ordering::Relaxed);
        if ended {
            tracing::info!(stream = %crate::protocol::server::redact(key), "relay from node {owner} ended");
            let _ = self.shards[shard]
                .send(ShardCommand::RelayEnded { key: key.clone() })
                .await;
        } else {
            let body = serde_json::to_vec(&AttachRequest {
                key: key.to_string(),
                node: self.s.node_id.clone(),
            })
            .unwrap_or_default();
            let _ = self
                .client
                .publish(format!("trib.detach.{}", wire::token(owner)), body.into())
                .await;
        }
    }

    /// Asks the owner for its cache; frames arrive on an inbox until the
    /// snapshot-end frame, which names the last sequence number it holds.
    pub(super) async fn fetch_snapshot(
        &self,
        owner: &str,
        key: &str,
    ) -> Option<(Vec<RawMessage>, u64)> {
        let inbox = self.client.new_inbox();
        let mut sub = self.client.subscribe(inbox.clone()).await.ok()?;
        self.client.flush().await.ok()?;
        self.client
            .publish_with_reply(
                format!("trib.snap.{}", wire::token(owner)),
                inbox,
                Bytes::copy_from_slice(key.as_bytes()),
            )
            .await
            .ok()?;
        let mut joiner = Joiner::new(self.s.max_message_len);
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        let deadline = tokio::time::Instant::now() + SNAPSHOT_TIMEOUT;
        loop {
            let msg = tokio::time::timeout_at(deadline, sub.next()).await.ok()??;
            count(&self.stats.nats_messages_in);
            self.stats
                .nats_bytes_in
                .fetch_add(msg.payload.len() as u64, Ordering::Relaxed);
            match joiner.push(msg.payload).ok()? {
                Some(Frame::Media { message, .. }) => {
                    // Another node's cache, bounded like ours.
                    bytes += message.payload.len();
                    if bytes > self.s.max_snapshot_bytes {
                        tracing::warn!(
                            "snapshot from node {owner} over {} bytes; not relayed",
                            self.s.max_snapshot_bytes
                        );
                        return None;
                    }
                    messages.push(message);
                }
                Some(Frame::SnapshotEnd { seq }) => return Some((messages, seq)),
                Some(Frame::End) => return None,
                None => {}
            }
        }
    }
}
