//! What every connection task of a shard shares: [`ConnectionContext`],
//! made once per shard and handed to the RTMP and HTTP connection tasks,
//! admission and the LL-HLS packagers. It owns nothing of a connection's
//! own; each field is the shard's (its hub, stats, open connections) or the
//! node's (auth, gate, cluster handle).

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use crate::auth::Auth;
use crate::cluster::ClusterHandle;
use crate::protocol::server::ServerConfig;

use super::gate::Gate;
use super::pump::SharedHub;
use super::push::Pushes;
use super::record::Recorders;
use super::ring::conn::Conn;
use super::stats::ShardStats;

/// What a connection needs from its shard.
pub struct ConnectionContext {
    /// Every open connection, so shutdown can tell them all.
    pub open: RefCell<Vec<Weak<Conn>>>,
    /// Encoders asked to reconnect elsewhere at shutdown.
    pub reconnects_asked: Cell<usize>,
    pub hub: Rc<SharedHub>,
    pub stats: Arc<ShardStats>,
    pub shard: usize,
    pub auth: Arc<Auth>,
    pub webhook: Option<crate::webhook::Webhook>,
    pub gate: Arc<Gate>,
    /// Ingest cap per publisher (0 = none).
    pub max_ingest_bytes_per_sec: u64,
    /// Set when the node is in a cluster: publish claims and remote plays.
    pub cluster: Option<ClusterHandle>,
    pub session: ServerConfig,
    /// The push targets of the streams published on this shard.
    pub pushes: Rc<Pushes>,
    /// The recordings of the streams published on this shard.
    pub recorders: Rc<Recorders>,
    /// The exec thread (pipelines and hooks), when configured.
    pub exec: Option<crate::exec::Exec>,
    /// The address the RTMP listener is bound to (unspecified: every one):
    /// where the node's own pipelines connect from.
    pub rtmp_ip: std::net::IpAddr,
    /// The players' settings: each app's latency budget.
    pub players: Arc<crate::config::PlayersConfig>,
    /// RTMP's settings: whether RTMPE is accepted, and per app.
    pub rtmp: Arc<crate::config::RtmpConfig>,
}
