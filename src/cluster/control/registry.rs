//! The registry side of the control thread: publish claims (atomic
//! create, takeover by revision), refreshes of this node's entries and
//! heartbeat, lookups, listings, the cluster's viewers and cluster-wide
//! kicks.

use super::*;

impl<N: Nats> Control<N> {
    pub(super) fn registration_value(reg: &Registration) -> Bytes {
        Bytes::from(serde_json::to_vec(reg).unwrap_or_default())
    }

    pub(super) async fn entry(
        &self,
        key: &str,
    ) -> Result<Option<(Registration, u64)>, RegistryError> {
        let kv = self.streams_kv().ok_or(RegistryError::NotOpen)?;
        count(&self.stats.registry_ops);
        let entry = tokio::time::timeout(OP_TIMEOUT, kv.entry(&wire::token(key)))
            .await
            .map_err(|_| RegistryError::Timeout("registry read"))?
            .map_err(RegistryError::nats)?;
        Ok(entry.and_then(|e| {
            let reg: Registration = serde_json::from_slice(&e.value).ok()?;
            Some((reg, e.revision))
        }))
    }

    /// The write of `key`'s API push targets to their bucket (none: an
    /// empty list, which reads as none and expires with the rest), if the
    /// bucket is open.
    fn write_pushes(
        &self,
        key: &StreamKey,
        urls: &[String],
    ) -> Option<impl std::future::Future<Output = ()> + 'static> {
        let kv = self.pushes_kv.borrow().clone()?;
        count(&self.stats.registry_ops);
        let token = wire::token(key);
        let value = Bytes::from(serde_json::to_vec(urls).unwrap_or_default());
        Some(async move {
            match tokio::time::timeout(OP_TIMEOUT, kv.put(&token, value)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!("push targets not kept: {e:?}"),
                Err(_) => tracing::debug!("push targets not kept: timed out"),
            }
        })
    }

    /// Writes `key`'s API push targets and waits for the write.
    pub(super) async fn keep_pushes(&self, key: &StreamKey, urls: &[String]) {
        if let Some(write) = self.write_pushes(key, urls) {
            write.await;
        }
    }

    /// Writes `key`'s API push targets without waiting.
    pub(super) fn spawn_keep_pushes(&self, key: &StreamKey, urls: &[String]) {
        if let Some(write) = self.write_pushes(key, urls) {
            tokio::task::spawn_local(write);
        }
    }

    /// The API push targets kept for `key` by an earlier owner.
    async fn kept_pushes(&self, key: &StreamKey) -> Vec<String> {
        let Some(kv) = self.pushes_kv.borrow().clone() else {
            return Vec::new();
        };
        count(&self.stats.registry_ops);
        // A publish waits for this: not long (the stream's entry, read
        // next, may still hold them).
        match tokio::time::timeout(PUSHES_READ_TIMEOUT, kv.entry(&wire::token(key))).await {
            Ok(Ok(Some(e))) => serde_json::from_slice(&e.value).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Whether the node named in a registry entry still answers.
    pub(super) async fn alive(&self, node: &str) -> bool {
        let subject = format!("trib.ping.{}", wire::token(node));
        matches!(
            tokio::time::timeout(
                Duration::from_millis(800),
                self.client.request(subject, Bytes::new())
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// The registry step of a publish. Rule for a key found registered:
    /// a live owner keeps it (unless takeover); a dead owner's entry is
    /// replaced by compare-and-set.
    pub(super) async fn claim(
        &self,
        key: &StreamKey,
        shard: usize,
        takeover: bool,
        reply: oneshot::Sender<ClaimResult>,
    ) {
        let local_owner = self.owned.borrow().get(key).map(|o| o.shard);
        if local_owner.is_some() && !takeover {
            let _ = reply.send(ClaimResult::Refused(self.s.node_id.clone()));
            return;
        }
        let registration = Registration {
            node: self.s.node_id.clone(),
            shard,
            started_ms: unix_ms(),
            video_codec: String::new(),
            audio_codec: String::new(),
            bitrate_kbps: 0,
            pushes: Vec::new(),
        };
        // The entry goes into `owned` before the registry answers, so that
        // an Unregister arriving meanwhile (the publisher left, or the
        // shard stopped waiting) finds it; the claim id tells whether it is
        // still ours afterwards.
        let claim = self.next_generation.get() + 1;
        self.next_generation.set(claim);
        let subject = format!("trib.media.{}.{}", self.me, wire::token(key));
        {
            let mut owned = self.owned.borrow_mut();
            let previous = owned.insert(
                key.clone(),
                Owned {
                    shard,
                    registration: registration.clone(),
                    revision: None,
                    attached: HashMap::new(),
                    exporting: false,
                    subject,
                    claim,
                    pushes_kept: false,
                    claiming: true,
                },
            );
            // A local takeover keeps the attachments: the new shard exports.
            if let (Some(prev), Some(o)) = (previous, owned.get_mut(key)) {
                o.attached = prev.attached;
                o.exporting = !o.attached.is_empty();
            }
        }
        // An owner lost without a goodbye left its API push targets behind
        // (its entry may have expired since): they go on with the stream.
        // (Read here, after the entry is in `owned`, for the reason above.)
        let mut registration = registration;
        registration.pushes = self.kept_pushes(key).await;
        if !registration.pushes.is_empty() {
            if let Some(o) = self.owned.borrow_mut().get_mut(key) {
                if o.claim == claim {
                    o.registration.pushes = registration.pushes.clone();
                }
            }
        }
        let result = self.register(key, &registration, takeover).await;
        let still = match self.owned.borrow_mut().get_mut(key) {
            Some(o) if o.claim == claim => {
                o.claiming = false;
                true
            }
            _ => false,
        };
        let answer = match result {
            Ok(Some(rev)) if still => {
                let mut pushes = Vec::new();
                if let Some(o) = self.owned.borrow_mut().get_mut(key) {
                    o.revision = Some(rev);
                    pushes = o.registration.pushes.clone();
                }
                ClaimResult::Registered { pushes }
            }
            Ok(Some(rev)) => {
                // The publisher left while the registry answered: take the
                // entry back out (compare-and-set). If a newer local claim
                // replaced ours (a takeover), the entry is that one's.
                let replaced = self.owned.borrow().contains_key(key);
                if let (false, Some(kv)) = (replaced, self.streams_kv()) {
                    count(&self.stats.registry_ops);
                    let _ = tokio::time::timeout(
                        OP_TIMEOUT,
                        kv.delete_expect_revision(&wire::token(key), rev),
                    )
                    .await;
                }
                ClaimResult::Registered { pushes: Vec::new() }
            }
            Ok(None) => {
                count(&self.stats.registry_conflicts);
                // A shard that stopped waiting publishes anyway, as when
                // NATS is away: keep the entry unregistered so the refresh
                // applies the conflict rule (the registered owner wins).
                if still && !reply.is_closed() {
                    self.owned.borrow_mut().remove(key);
                }
                match self.entry(key).await {
                    Ok(Some((other, _))) => ClaimResult::Refused(other.node),
                    _ => ClaimResult::Refused(String::new()),
                }
            }
            Err(e) => {
                count(&self.stats.registry_errors);
                tracing::warn!(stream = %crate::protocol::server::redact(key), "registry unavailable ({e}); publishing locally, will register when NATS returns");
                ClaimResult::Unavailable
            }
        };
        let _ = reply.send(answer);
    }

    /// Writes our entry for `key`: Ok(Some(revision)) when it is ours,
    /// Ok(None) when a live node owns it, Err when the registry is
    /// unreachable.
    pub(super) async fn register(
        &self,
        key: &StreamKey,
        registration: &Registration,
        takeover: bool,
    ) -> Result<Option<u64>, RegistryError> {
        if !self.connected() {
            return Err(RegistryError::NotConnected);
        }
        let kv = self.streams_kv().ok_or(RegistryError::NotOpen)?;
        let value = Self::registration_value(registration);
        let token = wire::token(key);
        count(&self.stats.registry_ops);
        match tokio::time::timeout(OP_TIMEOUT, kv.create(&token, value.clone())).await {
            Err(_) => return Err(RegistryError::Timeout("registry create")),
            Ok(Ok(rev)) => return Ok(Some(rev)),
            Ok(Err(KvError::Exists)) => {}
            Ok(Err(e)) => return Err(RegistryError::nats(e)),
        }
        let Some((current, revision)) = self.entry(key).await? else {
            // Deleted or expired between the two calls: try once more.
            count(&self.stats.registry_ops);
            return match tokio::time::timeout(OP_TIMEOUT, kv.create(&token, value)).await {
                Ok(Ok(rev)) => Ok(Some(rev)),
                Ok(Err(KvError::Exists)) => Ok(None),
                Ok(Err(e)) => Err(RegistryError::nats(e)),
                Err(_) => Err(RegistryError::Timeout("registry create")),
            };
        };
        let ours = current.node == self.s.node_id;
        let stale = !ours && !takeover && !self.alive(&current.node).await;
        if !(ours || takeover || stale) {
            return Ok(None);
        }
        // The entry it replaces may hold API push targets: they go on with
        // the stream on its new owner (which `claim` hands to the shard).
        let mut value = value;
        if registration.pushes.is_empty() && !current.pushes.is_empty() {
            let mut inherited = registration.clone();
            inherited.pushes = current.pushes.clone();
            value = Self::registration_value(&inherited);
            if let Some(o) = self.owned.borrow_mut().get_mut(key) {
                o.registration.pushes = current.pushes;
            }
        }
        if stale {
            tracing::info!(
                stream = %crate::protocol::server::redact(key),
                "node {} no longer answers; taking its registry entry",
                current.node
            );
        } else if takeover && !ours {
            count(&self.stats.registry_conflicts);
            tracing::info!(
                stream = %crate::protocol::server::redact(key),
                "taking the stream over from node {}",
                current.node
            );
        }
        count(&self.stats.registry_ops);
        match tokio::time::timeout(OP_TIMEOUT, kv.update(&token, value.clone(), revision)).await {
            Ok(Ok(rev)) => return Ok(Some(rev)),
            Ok(Err(KvError::WrongRevision)) if ours => {}
            Ok(Err(KvError::WrongRevision)) => return Ok(None),
            Ok(Err(e)) => return Err(RegistryError::nats(e)),
            Err(_) => return Err(RegistryError::Timeout("registry update")),
        }
        // Our own entry changed under us: another write of this node (a
        // claim beside a refresh). Still ours: write once more; another
        // node's now: it wins.
        match self.entry(key).await? {
            Some((current, revision)) if current.node == self.s.node_id => {
                count(&self.stats.registry_ops);
                match tokio::time::timeout(OP_TIMEOUT, kv.update(&token, value, revision)).await {
                    Ok(Ok(rev)) => Ok(Some(rev)),
                    Ok(Err(KvError::WrongRevision)) => Ok(None),
                    Ok(Err(e)) => Err(RegistryError::nats(e)),
                    Err(_) => Err(RegistryError::Timeout("registry update")),
                }
            }
            _ => Ok(None),
        }
    }

    /// The local publisher left: end the export and delete our entry. The
    /// entry leaves `owned` at once; the NATS side runs in a task that a
    /// later Flush waits for.
    pub(super) fn unregister(self: &Rc<Self>, key: StreamKey, shard: usize) {
        let removed = {
            let mut owned = self.owned.borrow_mut();
            match owned.get(&key) {
                Some(o) if o.shard == shard => owned.remove(&key),
                _ => None,
            }
        };
        let Some(o) = removed else {
            return;
        };
        // Relaying nodes hear the end after the stream's last exported
        // message: when the export queue reaches it (`Export::Ended`), or
        // now if it already has.
        let mut end_now = false;
        if o.exporting {
            self.stats.exported_streams.fetch_sub(1, Ordering::Relaxed);
            end_now = self.ended_early.borrow_mut().remove(&key).is_some();
            if !end_now {
                self.draining.borrow_mut().insert(
                    key.clone(),
                    Draining {
                        subject: o.subject.clone(),
                        since: Instant::now(),
                    },
                );
            }
        }
        self.pending.set(self.pending.get() + 1);
        let c = self.clone();
        tokio::task::spawn_local(async move {
            if end_now {
                c.send_end(&o.subject).await;
            }
            if let (Some(rev), Some(kv), true) = (o.revision, c.streams_kv(), c.connected()) {
                count(&c.stats.registry_ops);
                let deleted = tokio::time::timeout(
                    OP_TIMEOUT,
                    kv.delete_expect_revision(&wire::token(&key), rev),
                )
                .await;
                // A goodbye: the stream's API push targets end with it
                // (unless another node owns the entry now).
                if matches!(deleted, Ok(Ok(_)))
                    && (!o.registration.pushes.is_empty() || o.pushes_kept)
                {
                    c.keep_pushes(&key, &[]).await;
                }
            }
            c.pending.set(c.pending.get() - 1);
        });
    }

    /// Kicks the publisher of `key` here or on the node that owns it.
    pub(super) async fn kick(&self, key: &StreamKey) -> Result<String, RegistryError> {
        if self.kick_local(key).await {
            return Ok(self.s.node_id.clone());
        }
        let (reg, _) = self.entry(key).await?.ok_or(RegistryError::NoSuchStream)?;
        if reg.node == self.s.node_id {
            return Err(RegistryError::NoSuchStream);
        }
        let subject = format!("trib.kick.{}", wire::token(&reg.node));
        let answer = self
            .client
            .request(subject, Bytes::copy_from_slice(key.as_bytes()))
            .await
            .map_err(|e| RegistryError::nats(format!("node {}: {e}", reg.node)))?;
        if answer.payload.as_ref() == b"ok" {
            Ok(reg.node)
        } else {
            Err(RegistryError::NoSuchStream)
        }
    }

    pub(super) async fn locate(&self, key: &str) -> (Located, Option<Registration>) {
        if !self.connected() || self.streams_kv().is_none() {
            return (Located::Unavailable, None);
        }
        match self.entry(key).await {
            Ok(Some((reg, _))) if reg.node == self.s.node_id => (Located::Here, Some(reg)),
            Ok(Some((reg, _))) => (Located::Remote(reg.node.clone()), Some(reg)),
            Ok(None) => (Located::Absent, None),
            Err(_) => (Located::Unavailable, None),
        }
    }

    pub(super) async fn list(&self) -> Result<Vec<(StreamKey, Registration)>, RegistryError> {
        let kv = self.streams_kv().ok_or(RegistryError::NotOpen)?;
        let keys = tokio::time::timeout(OP_TIMEOUT, kv.keys())
            .await
            .map_err(|_| RegistryError::Timeout("registry listing"))?
            .map_err(RegistryError::nats)?;
        let mut out = Vec::new();
        for token in keys {
            // A key the naming rule refuses names no stream here.
            let Some(key) = wire::untoken(&token).and_then(|k| StreamKey::parse(&k).ok()) else {
                continue;
            };
            if let Ok(Some((reg, _))) = self.entry(&key).await {
                out.push((key, reg));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub(super) async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        let kv = self
            .nodes_kv
            .borrow()
            .clone()
            .ok_or(RegistryError::NotOpen)?;
        tokio::time::timeout(OP_TIMEOUT, async {
            let names = kv.keys().await.map_err(RegistryError::nats)?;
            let mut out = Vec::new();
            for name in names {
                if let Ok(Some(v)) = kv.entry(&name).await {
                    if let Ok(info) = serde_json::from_slice::<NodeInfo>(&v.value) {
                        out.push(info);
                    }
                }
            }
            out.sort_by(|a, b| a.node.cmp(&b.node));
            Ok(out)
        })
        .await
        .map_err(|_| RegistryError::Timeout("node listing"))?
    }

    /// This node's viewers of each stream, as it answers other nodes.
    pub(super) fn local_audience(&self) -> NodeAudience {
        NodeAudience::of(&self.s.node_id, &self.s.audience)
    }

    /// Every stream's viewers, summed over this node and every node with a
    /// live heartbeat that answers within [`VIEWERS_WAIT`] (asked all at
    /// once); the others are named as missing. If the heartbeats cannot be
    /// read, the sums are this node's alone and `error` says why.
    pub(super) async fn viewers(&self) -> Result<ClusterAudience, RegistryError> {
        let mut out = ClusterAudience::default();
        out.add(self.local_audience());
        let nodes = match self.nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                out.error = Some(e.to_string());
                Vec::new()
            }
        };
        let mut asked = Vec::new();
        let mut asks = tokio::task::JoinSet::new();
        for info in nodes.into_iter().filter(|n| n.node != self.s.node_id) {
            let client = self.client.clone();
            let subject = format!("trib.viewers.{}", wire::token(&info.node));
            asked.push(info.node);
            count(&self.stats.registry_ops);
            asks.spawn_local(async move {
                let answer =
                    tokio::time::timeout(VIEWERS_WAIT, client.request(subject, Bytes::new())).await;
                match answer {
                    Ok(Ok(msg)) => serde_json::from_slice::<NodeAudience>(&msg.payload).ok(),
                    _ => None,
                }
            });
        }
        while let Some(done) = asks.join_next().await {
            if let Ok(Some(a)) = done {
                out.add(a);
            }
        }
        out.missing = asked
            .into_iter()
            .filter(|n| !out.answered.contains(n))
            .collect();
        out.answered.sort();
        out.missing.sort();
        Ok(out)
    }

    /// Refreshes every owned entry by compare-and-set, registers the ones
    /// made while NATS was away, fences the ones another node took, and
    /// writes this node's heartbeat.
    pub(super) async fn refresh(&self) {
        self.refresh_entries(false).await;
    }

    /// Registers the owned entries the registry has not taken yet (NATS
    /// was away, or JetStream had no leader), and only those.
    pub(super) async fn register_unregistered(&self) {
        self.refresh_entries(true).await;
    }

    /// [`Self::refresh`], or with `only_unregistered` the entries without
    /// a revision and no heartbeat. An entry whose claim is asking the
    /// registry, or that a newer claim replaced since, is left alone: its
    /// claim writes it.
    async fn refresh_entries(&self, only_unregistered: bool) {
        type Snapshot = (StreamKey, Registration, Option<u64>, u64, bool);
        let owned: Vec<Snapshot> = self
            .owned
            .borrow()
            .iter()
            .filter(|(_, o)| !o.claiming)
            .filter(|(_, o)| !only_unregistered || o.revision.is_none())
            .map(|(k, o)| {
                let kept = o.pushes_kept;
                (k.clone(), o.registration.clone(), o.revision, o.claim, kept)
            })
            .collect();
        let Some(kv) = self.streams_kv() else {
            return;
        };
        // The entry as the snapshot saw it, still: same claim, not claiming.
        let same = |key: &StreamKey, claim: u64| {
            self.owned
                .borrow()
                .get(key)
                .is_some_and(|o| o.claim == claim && !o.claiming)
        };
        for (key, reg, revision, claim, pushes_kept) in owned {
            if !same(&key, claim) {
                continue;
            }
            let token = wire::token(&key);
            let value = Self::registration_value(&reg);
            count(&self.stats.registry_ops);
            let result = match revision {
                Some(rev) => {
                    match tokio::time::timeout(OP_TIMEOUT, kv.update(&token, value, rev)).await {
                        Ok(Ok(rev)) => Ok(Some(rev)),
                        Ok(Err(KvError::WrongRevision)) => {
                            // Taken over, or expired while we could not refresh.
                            self.register(&key, &reg, false).await
                        }
                        Ok(Err(e)) => Err(RegistryError::nats(e)),
                        Err(_) => Err(RegistryError::Timeout("registry refresh")),
                    }
                }
                None => self.register(&key, &reg, false).await,
            };
            match result {
                Ok(Some(rev)) => {
                    if let Some(o) = self.owned.borrow_mut().get_mut(&key) {
                        if o.claim == claim {
                            o.revision = Some(rev);
                        }
                    }
                    // Still ours: its API push targets live on with it
                    // (and none, once, after a change to none).
                    // Not waited for: a slow bucket must not hold up the
                    // refreshes of the entries.
                    if !reg.pushes.is_empty() {
                        self.spawn_keep_pushes(&key, &reg.pushes);
                    } else if pushes_kept {
                        self.spawn_keep_pushes(&key, &[]);
                        if let Some(o) = self.owned.borrow_mut().get_mut(&key) {
                            if o.claim == claim && o.registration.pushes.is_empty() {
                                o.pushes_kept = false;
                            }
                        }
                    }
                }
                Ok(None) => {
                    // Rule: the entry in the registry wins. Another node
                    // holds this key (a takeover, or a publish made while
                    // NATS was split from us): our publisher is closed.
                    count(&self.stats.registry_conflicts);
                    tracing::warn!(
                        stream = %crate::protocol::server::redact(&key),
                        "another node owns this stream in the registry; closing the local publisher"
                    );
                    // (Only the entry this refresh wrote for: a newer claim
                    // of the key on this node has its own answer.)
                    let removed = {
                        let mut owned = self.owned.borrow_mut();
                        match owned.get(&key) {
                            Some(o) if o.claim == claim => owned.remove(&key),
                            _ => None,
                        }
                    };
                    if let Some(o) = removed {
                        let shard = o.shard;
                        if o.exporting {
                            self.stats.exported_streams.fetch_sub(1, Ordering::Relaxed);
                            let end = self.client.publish(o.subject, wire::encode_end());
                            let _ = tokio::time::timeout(PUBLISH_WAIT, end).await;
                        }
                        let _ = self.shards[shard]
                            .send(ShardCommand::Fence { key: key.clone() })
                            .await;
                    }
                }
                Err(e) => {
                    count(&self.stats.registry_errors);
                    tracing::debug!("registry refresh: {e}");
                }
            }
        }
        let nodes = self.nodes_kv.borrow().clone();
        if let (Some(nodes), false) = (nodes, only_unregistered) {
            let hb = NodeInfo {
                node: self.s.node_id.clone(),
                rtmp: self.s.rtmp_addr.clone(),
                started_ms: self.started_ms,
                streams: self.owned.borrow().len(),
                instance: crate::output::push::instance(),
            };
            let body = serde_json::to_vec(&hb).unwrap_or_default();
            count(&self.stats.registry_ops);
            let _ = tokio::time::timeout(OP_TIMEOUT, nodes.put(&self.me, body.into())).await;
        }
    }

    /// Writes this node's changed recording listings into the index.
    pub(super) async fn publish_index(&self) {
        let Some(recordings) = self.s.recordings.clone() else {
            return;
        };
        let Some(kv) = self.recordings_kv.borrow().clone() else {
            return;
        };
        for (key, files) in recordings.take_changed() {
            self.queue_store(&key, &files);
            let entry = format!("{}.{}", self.me, wire::token(&key));
            count(&self.stats.registry_ops);
            if files.is_empty() {
                let _ = tokio::time::timeout(OP_TIMEOUT, kv.put(&entry, Bytes::new())).await;
                continue;
            }
            let mut listed: Vec<IndexedFile> = files
                .into_iter()
                .map(|s| IndexedFile {
                    file: s.file,
                    start_ms: s.start_ms,
                    duration_ms: s.duration_ms,
                    bytes: s.bytes,
                })
                .collect();
            let mut value = serde_json::to_vec(&listed).unwrap_or_default();
            while value.len() > MAX_INDEX_ENTRY && listed.len() > 1 {
                let drop = (listed.len() / 4).max(1);
                listed.drain(..drop);
                value = serde_json::to_vec(&listed).unwrap_or_default();
            }
            let put = tokio::time::timeout(OP_TIMEOUT, kv.put(&entry, value.into())).await;
            if !matches!(put, Ok(Ok(_))) {
                // Tried again at the next tick.
                count(&self.stats.registry_errors);
                recordings.mark_changed(&key);
            }
        }
    }

    /// Every node's finished files of `key`, from the index.
    pub(super) async fn indexed(&self, key: &StreamKey) -> Result<NodesFiles, RegistryError> {
        let kv = self
            .recordings_kv
            .borrow()
            .clone()
            .ok_or(RegistryError::NotOpen)?;
        let suffix = format!(".{}", wire::token(key));
        tokio::time::timeout(OP_TIMEOUT, async {
            let names = kv.keys().await.map_err(RegistryError::nats)?;
            let mut out = Vec::new();
            for name in names.iter().filter(|n| n.ends_with(&suffix)) {
                let node = &name[..name.len() - suffix.len()];
                let Some(node) = wire::untoken(node) else {
                    continue;
                };
                count(&self.stats.registry_ops);
                if let Ok(Some(e)) = kv.entry(name).await {
                    if let Ok(files) = serde_json::from_slice::<Vec<IndexedFile>>(&e.value) {
                        if !files.is_empty() {
                            out.push((node, files));
                        }
                    }
                }
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(out)
        })
        .await
        .map_err(|_| RegistryError::Timeout("recordings index"))?
    }
}
