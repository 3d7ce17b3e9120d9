//! The owner side of the control thread: other nodes attach to a stream
//! of this node, fetch its snapshot, and receive its media, which the
//! shards export through their own queue (see `ClusterHandle`).

use super::*;

impl<N: Nats> Control<N> {
    /// The export queue reached a stream's end: every message before it is
    /// published, so the End frame follows them.
    pub(super) async fn export_ended(&self, key: StreamKey) {
        let draining = self.draining.borrow_mut().remove(&key);
        match draining {
            Some(d) => self.send_end(&d.subject).await,
            // The Unregister is still on the request queue: it sends the end.
            None => {
                self.ended_early.borrow_mut().insert(key, Instant::now());
            }
        }
    }

    /// Ends, after [`DRAIN_LIMIT`], exports whose `Export::Ended` never came.
    pub(super) async fn expire_draining(&self, now: Instant) {
        let late: Vec<String> = {
            let owned = self.owned.borrow();
            let mut draining = self.draining.borrow_mut();
            // A key published here again meanwhile has a live stream on the
            // same subject: no End for it.
            let late = draining
                .iter()
                .filter(|(k, d)| {
                    now.duration_since(d.since) >= DRAIN_LIMIT && !owned.contains_key(*k)
                })
                .map(|(_, d)| d.subject.clone())
                .collect();
            draining.retain(|_, d| now.duration_since(d.since) < DRAIN_LIMIT);
            late
        };
        for subject in late {
            self.send_end(&subject).await;
        }
        self.ended_early
            .borrow_mut()
            .retain(|_, t| now.duration_since(*t) < DRAIN_LIMIT);
    }

    /// Tells relaying nodes the stream on `subject` ended.
    pub(super) async fn send_end(&self, subject: &str) {
        let end = self.client.publish(subject.to_owned(), wire::encode_end());
        let _ = tokio::time::timeout(PUBLISH_WAIT, end).await;
    }

    /// Publishes one message of an exported stream. Never waits long: while
    /// NATS is away (the client's queue full) messages are dropped and
    /// counted, and the relaying nodes resume at a keyframe.
    pub(super) async fn export(&self, key: &StreamKey, seq: u64, message: &RawMessage) {
        let subject = match self.owned.borrow().get(key) {
            Some(o) if o.exporting => Some(o.subject.clone()),
            _ => None,
        };
        // Its publisher left, and these are its last messages.
        let subject =
            subject.or_else(|| self.draining.borrow().get(key).map(|d| d.subject.clone()));
        let Some(subject) = subject else {
            return;
        };
        if !self.connected() {
            count(&self.stats.export_drops);
            return;
        }
        let mut frames = Vec::with_capacity(1);
        wire::encode_media(seq, message, self.max_frame(), |f| frames.push(f));
        for f in frames {
            self.stats
                .nats_bytes_out
                .fetch_add(f.len() as u64, Ordering::Relaxed);
            count(&self.stats.nats_messages_out);
            let sent = tokio::time::timeout(PUBLISH_WAIT, self.client.publish(subject.clone(), f));
            if !matches!(sent.await, Ok(Ok(()))) {
                count(&self.stats.export_drops);
                return;
            }
        }
    }

    /// Attach, snapshot, ping, viewers and detach requests from other nodes.
    pub(super) async fn serve_requests(self: Rc<Self>) {
        let subject = format!("trib.*.{}", self.me);
        let mut sub = loop {
            match self.client.subscribe(subject.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!("NATS subscribe {subject}: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        while let Some(msg) = sub.next().await {
            let Some(reply) = msg.reply.clone() else {
                continue;
            };
            let verb = msg.subject.split('.').nth(1).unwrap_or("").to_owned();
            let c = self.clone();
            tokio::task::spawn_local(async move {
                match verb.as_str() {
                    "ping" => {
                        let _ = c
                            .client
                            .publish(reply.to_string(), Bytes::from_static(b"pong"))
                            .await;
                    }
                    "viewers" => {
                        let body = serde_json::to_vec(&c.local_audience()).unwrap_or_default();
                        let _ = c.client.publish(reply.to_string(), body.into()).await;
                    }
                    "attach" => {
                        let ok = c.on_attach(&msg.payload).await;
                        let body = serde_json::to_vec(&AttachReply { ok }).unwrap_or_default();
                        let _ = c.client.publish(reply.to_string(), body.into()).await;
                    }
                    "detach" => {
                        if let Ok(r) = serde_json::from_slice::<AttachRequest>(&msg.payload) {
                            if let Some(o) = c.owned.borrow_mut().get_mut(r.key.as_str()) {
                                o.attached.remove(&r.node);
                            }
                        }
                        let _ = c.client.publish(reply.to_string(), Bytes::new()).await;
                    }
                    "snap" => c.on_snapshot(&msg.payload, reply.to_string()).await,
                    "recget" => c.serve_recording(&msg.payload, reply.to_string()).await,
                    "kick" => {
                        let key = std::str::from_utf8(&msg.payload)
                            .ok()
                            .and_then(|k| StreamKey::parse(k).ok());
                        let done = match key {
                            Some(key) => c.kick_local(&key).await,
                            None => false,
                        };
                        let body: &'static [u8] = if done { b"ok" } else { b"no" };
                        let _ = c
                            .client
                            .publish(reply.to_string(), Bytes::from_static(body))
                            .await;
                    }
                    _ => {}
                }
            });
        }
    }

    pub(super) async fn on_attach(&self, payload: &[u8]) -> bool {
        let Ok(r) = serde_json::from_slice::<AttachRequest>(payload) else {
            return false;
        };
        let Ok(key) = StreamKey::parse(&r.key) else {
            return false;
        };
        let start = {
            let mut owned = self.owned.borrow_mut();
            let Some(o) = owned.get_mut(r.key.as_str()) else {
                return false;
            };
            o.attached.insert(r.node, Instant::now());
            let start = !o.exporting;
            o.exporting = true;
            start.then_some(o.shard)
        };
        if let Some(shard) = start {
            self.stats.exported_streams.fetch_add(1, Ordering::Relaxed);
            // Awaited before the reply, so the shard exports before it
            // takes the snapshot the attached node asks for next.
            let _ = self.shards[shard]
                .send(ShardCommand::Export { key, on: true })
                .await;
        }
        true
    }

    pub(super) async fn on_snapshot(&self, payload: &[u8], reply: String) {
        let key = std::str::from_utf8(payload)
            .ok()
            .and_then(|k| StreamKey::parse(k).ok());
        let shard = key
            .as_ref()
            .and_then(|k| self.owned.borrow().get(k).map(|o| o.shard));
        let snapshot = match (shard, key) {
            (Some(shard), Some(key)) => {
                let (tx, rx) = oneshot::channel();
                let cmd = ShardCommand::Snapshot { key, reply: tx };
                if self.shards[shard].send(cmd).await.is_ok() {
                    rx.await.ok().flatten()
                } else {
                    None
                }
            }
            _ => None,
        };
        let Some((messages, last)) = snapshot else {
            let _ = self.client.publish(reply, wire::encode_end()).await;
            return;
        };
        let max = self.max_frame();
        for (i, m) in messages.iter().enumerate() {
            let mut frames = Vec::with_capacity(1);
            wire::encode_media(i as u64, m, max, |f| frames.push(f));
            for f in frames {
                self.stats
                    .nats_bytes_out
                    .fetch_add(f.len() as u64, Ordering::Relaxed);
                count(&self.stats.nats_messages_out);
                let _ = self.client.publish(reply.clone(), f).await;
            }
        }
        let _ = self
            .client
            .publish(reply, wire::encode_snapshot_end(last))
            .await;
    }

    /// Kicks the local publisher of `key`, if this node has it.
    pub(super) async fn kick_local(&self, key: &StreamKey) -> bool {
        let Some(shard) = self.owned.borrow().get(key).map(|o| o.shard) else {
            return false;
        };
        let (reply, rx) = oneshot::channel();
        let cmd = ShardCommand::Kick {
            key: key.clone(),
            reply,
        };
        self.shards[shard].send(cmd).await.is_ok() && rx.await.unwrap_or(false)
    }

    pub(super) async fn expire_attachments(&self, now: Instant) {
        let mut stop = Vec::new();
        for (key, o) in self.owned.borrow_mut().iter_mut() {
            o.attached
                .retain(|_, at| now.duration_since(*at) < ATTACH_TTL);
            if o.exporting && o.attached.is_empty() {
                o.exporting = false;
                stop.push((key.clone(), o.shard));
            }
        }
        for (key, shard) in stop {
            self.stats.exported_streams.fetch_sub(1, Ordering::Relaxed);
            let _ = self.shards[shard]
                .send(ShardCommand::Export { key, on: false })
                .await;
        }
    }
}
