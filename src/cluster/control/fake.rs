//! An in-process NATS for the control thread's unit tests: subjects with
//! `*` and `>` wildcards, request/reply over inboxes (no responders
//! answered at once, as nats-server does), and key-value buckets with
//! revisions, create-if-absent and compare-and-set. Every node of a test
//! cluster is a [`FakeNats`] on one [`Bus`]; a test takes the bus down,
//! wipes the registry (a fresh server) or cuts one node off. It stands in
//! for the server only in these unit tests: every end-to-end test runs
//! real nats-server processes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{RequestErrorKind, Subject};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::nats::{Kv, KvEntry, KvError, Msg, Nats, Objects};

/// Messages a subscriber may hold before the bus drops them (a slow
/// consumer, as on a real server).
const SUB_QUEUE: usize = 4096;
const REQUEST_WAIT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(super) struct Bus {
    subs: RefCell<Vec<Subscription>>,
    buckets: RefCell<HashMap<String, Rc<RefCell<Bucket>>>>,
    /// Object store buckets: each object's bytes by name.
    objects: RefCell<HashMap<String, ObjectBucket>>,
    down: Cell<bool>,
    next_id: Cell<u64>,
    /// Registry operations wait while this is set (see [`Bus::hold`]).
    held: Cell<bool>,
    released: tokio::sync::Notify,
}

struct Subscription {
    pattern: String,
    client: u64,
    tx: mpsc::Sender<Msg>,
}

/// An object store bucket: each object's bytes by name.
type ObjectBucket = Rc<RefCell<HashMap<String, Bytes>>>;

#[derive(Default)]
struct Bucket {
    values: HashMap<String, (Bytes, u64)>,
    revision: u64,
}

impl Bus {
    pub(super) fn new() -> Rc<Bus> {
        Rc::new(Bus::default())
    }

    /// A client of this bus.
    pub(super) fn client(self: &Rc<Bus>) -> FakeNats {
        FakeNats {
            bus: self.clone(),
            id: self.id(),
            cut: Rc::new(Cell::new(false)),
        }
    }

    /// The server goes away (true) or comes back (false).
    pub(super) fn set_down(&self, down: bool) {
        self.down.set(down);
    }

    /// A fresh server: every bucket and subscription is gone.
    pub(super) fn wipe(&self) {
        self.buckets.borrow_mut().clear();
        self.subs.borrow_mut().clear();
    }

    /// Registry operations wait (true) until released (false): a test
    /// acts while a claim is in flight.
    pub(super) fn hold(&self, held: bool) {
        self.held.set(held);
        if !held {
            self.released.notify_waiters();
        }
    }

    /// `key`'s value in `bucket` reaches the bucket's age limit.
    pub(super) fn expire(&self, bucket: &str, key: &str) {
        if let Some(b) = self.buckets.borrow().get(bucket) {
            b.borrow_mut().values.remove(key);
        }
    }

    /// `key`'s value in `bucket`, as the test sees it.
    pub(super) fn value(&self, bucket: &str, key: &str) -> Option<(Bytes, u64)> {
        let b = self.buckets.borrow().get(bucket).cloned()?;
        let v = b.borrow().values.get(key).cloned();
        v
    }

    fn id(&self) -> u64 {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        id
    }

    /// Delivers to every matching live subscriber; how many there were.
    fn deliver(&self, subject: &str, reply: Option<String>, payload: Bytes) -> usize {
        let mut subs = self.subs.borrow_mut();
        subs.retain(|s| !s.tx.is_closed());
        let mut n = 0;
        for s in subs.iter().filter(|s| matches(&s.pattern, subject)) {
            n += 1;
            let _ = s.tx.try_send(Msg {
                subject: Subject::from(subject),
                reply: reply.as_deref().map(Subject::from),
                payload: payload.clone(),
                headers: None,
                status: None,
                description: None,
                length: payload.len(),
            });
        }
        n
    }
}

/// NATS subject matching: `*` is one token, a final `>` the rest.
fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// One node's connection to the bus.
#[derive(Clone)]
pub(super) struct FakeNats {
    bus: Rc<Bus>,
    id: u64,
    cut: Rc<Cell<bool>>,
}

impl FakeNats {
    /// This node loses the server (true: its subscriptions end, as a
    /// killed process's do) or regains it.
    pub(super) fn cut_off(&self, cut: bool) {
        self.cut.set(cut);
        if cut {
            self.bus.subs.borrow_mut().retain(|s| s.client != self.id);
        }
    }

    fn up(&self) -> Result<(), String> {
        if self.bus.down.get() || self.cut.get() {
            Err("not connected".into())
        } else {
            Ok(())
        }
    }
}

pub(super) struct FakeSub(mpsc::Receiver<Msg>);

impl futures_lite::Stream for FakeSub {
    type Item = Msg;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Msg>> {
        self.0.poll_recv(cx)
    }
}

impl Nats for FakeNats {
    type Kv = FakeKv;
    type Objects = FakeObjects;
    type Sub = FakeSub;

    fn connected(&self) -> bool {
        self.up().is_ok()
    }

    fn max_payload(&self) -> usize {
        1 << 20
    }

    fn new_inbox(&self) -> String {
        format!("_INBOX.{}.{}", self.id, self.bus.id())
    }

    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), String> {
        self.up()?;
        self.bus.deliver(&subject, None, payload);
        Ok(())
    }

    async fn publish_with_reply(
        &self,
        subject: String,
        reply: String,
        payload: Bytes,
    ) -> Result<(), String> {
        self.up()?;
        self.bus.deliver(&subject, Some(reply), payload);
        Ok(())
    }

    async fn request(&self, subject: String, payload: Bytes) -> Result<Msg, RequestErrorKind> {
        self.up().map_err(|_| RequestErrorKind::Other)?;
        let inbox = self.new_inbox();
        let mut sub = self
            .subscribe(inbox.clone())
            .await
            .map_err(|_| RequestErrorKind::Other)?;
        if self.bus.deliver(&subject, Some(inbox), payload) == 0 {
            return Err(RequestErrorKind::NoResponders);
        }
        match tokio::time::timeout(REQUEST_WAIT, sub.0.recv()).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(RequestErrorKind::Other),
            Err(_) => Err(RequestErrorKind::TimedOut),
        }
    }

    async fn subscribe(&self, subject: String) -> Result<FakeSub, String> {
        self.up()?;
        let (tx, rx) = mpsc::channel(SUB_QUEUE);
        self.bus.subs.borrow_mut().push(Subscription {
            pattern: subject,
            client: self.id,
            tx,
        });
        Ok(FakeSub(rx))
    }

    async fn flush(&self) -> Result<(), String> {
        self.up()
    }

    async fn open_bucket(&self, bucket: &str, _: Duration, _: usize) -> Result<FakeKv, String> {
        self.up()?;
        let b = self
            .bus
            .buckets
            .borrow_mut()
            .entry(bucket.to_owned())
            .or_default()
            .clone();
        Ok(FakeKv {
            bucket: Rc::downgrade(&b),
            client: self.clone(),
        })
    }

    async fn open_objects(
        &self,
        bucket: &str,
        _: Duration,
        _: u64,
        _: usize,
    ) -> Result<FakeObjects, String> {
        self.up()?;
        let b = self
            .bus
            .objects
            .borrow_mut()
            .entry(bucket.to_owned())
            .or_default()
            .clone();
        Ok(FakeObjects {
            objects: b,
            client: self.clone(),
        })
    }
}

/// An object store bucket on the bus (the files read and written with
/// std::fs: these are tests).
#[derive(Clone)]
pub(super) struct FakeObjects {
    objects: ObjectBucket,
    client: FakeNats,
}

impl FakeObjects {
    /// The names stored.
    pub(super) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.objects.borrow().keys().cloned().collect();
        names.sort();
        names
    }

    /// Stores `bytes` as `name` (what another node would have put).
    pub(super) fn insert(&self, name: &str, bytes: &[u8]) {
        self.objects
            .borrow_mut()
            .insert(name.to_owned(), Bytes::copy_from_slice(bytes));
    }
}

impl Objects for FakeObjects {
    async fn has(&self, name: &str) -> Result<bool, String> {
        self.client.up()?;
        Ok(self.objects.borrow().contains_key(name))
    }

    async fn put_file(&self, name: &str, path: &std::path::Path) -> Result<u64, String> {
        self.client.up()?;
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let n = bytes.len() as u64;
        self.objects
            .borrow_mut()
            .insert(name.to_owned(), Bytes::from(bytes));
        Ok(n)
    }

    async fn get_file(&self, name: &str, dest: &std::path::Path, max: u64) -> Result<u64, String> {
        self.client.up()?;
        let bytes = self
            .objects
            .borrow()
            .get(name)
            .cloned()
            .ok_or_else(|| format!("{name}: not found"))?;
        if bytes.len() as u64 > max {
            return Err(format!("{name}: more than {max} bytes"));
        }
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(|e| e.to_string())?;
        f.write_all(&bytes).map_err(|e| e.to_string())?;
        Ok(bytes.len() as u64)
    }
}

/// A bucket as one client opened it: it fails once the server is wiped
/// (reopen it, as after a reconnect).
#[derive(Clone)]
pub(super) struct FakeKv {
    bucket: std::rc::Weak<RefCell<Bucket>>,
    client: FakeNats,
}

impl FakeKv {
    async fn open(&self) -> Result<Rc<RefCell<Bucket>>, KvError> {
        let bus = &self.client.bus;
        while bus.held.get() {
            bus.released.notified().await;
        }
        self.client.up().map_err(KvError::Other)?;
        self.bucket
            .upgrade()
            .ok_or_else(|| KvError::Other("no such bucket".into()))
    }
}

impl Bucket {
    fn write(&mut self, key: &str, value: Bytes) -> u64 {
        self.revision += 1;
        self.values.insert(key.to_owned(), (value, self.revision));
        self.revision
    }

    fn last(&self, key: &str) -> Option<u64> {
        self.values.get(key).map(|v| v.1)
    }
}

impl Kv for FakeKv {
    async fn entry(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        let b = self.open().await?;
        let b = b.borrow();
        Ok(b.values.get(key).map(|(value, revision)| KvEntry {
            value: value.clone(),
            revision: *revision,
        }))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        let b = self.open().await?;
        let mut b = b.borrow_mut();
        if b.values.contains_key(key) {
            return Err(KvError::Exists);
        }
        Ok(b.write(key, value))
    }

    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
        let b = self.open().await?;
        let mut b = b.borrow_mut();
        if b.last(key) != Some(revision) {
            return Err(KvError::WrongRevision);
        }
        Ok(b.write(key, value))
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        let b = self.open().await?;
        let revision = b.borrow_mut().write(key, value);
        Ok(revision)
    }

    async fn delete_expect_revision(&self, key: &str, revision: u64) -> Result<(), KvError> {
        let b = self.open().await?;
        let mut b = b.borrow_mut();
        if b.last(key) != Some(revision) {
            return Err(KvError::WrongRevision);
        }
        b.values.remove(key);
        b.revision += 1;
        Ok(())
    }

    async fn keys(&self) -> Result<Vec<String>, KvError> {
        let b = self.open().await?;
        let keys = b.borrow().values.keys().cloned().collect();
        Ok(keys)
    }
}

#[test]
fn subjects_match_as_nats_matches_them() {
    assert!(matches("trib.*.a", "trib.ping.a"));
    assert!(!matches("trib.*.a", "trib.ping.b"));
    assert!(!matches("trib.*.a", "trib.ping.a.x"));
    assert!(matches("trib.>", "trib.ping.a"));
    assert!(!matches("trib.>", "trib"));
    assert!(matches("_INBOX.1.2", "_INBOX.1.2"));
}
