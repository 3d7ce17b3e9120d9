//! Admission: the one place that decides whether a publish or a play may
//! start. A publish goes through auth (rules, then the webhook), the
//! node's publisher limit, the cluster's claim, then the hub's claim,
//! rolling the cluster claim back if the hub refuses. A play goes through
//! auth, where the stream is (this node, another node, or not yet), then
//! the per-stream player limit. Each refusal is typed; the connection turns
//! it into the status its client hears.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::auth::Action;
use crate::cluster::{ClaimResult, Located, Request};
use crate::stream::Protocol;

use super::context::ConnectionContext;
use super::gate::Ticket;
use super::hub::{StreamId, RELAY_START_WAIT};
use super::ring::conn::Conn;
use crate::stream::StreamKey;

/// Why a publish or a play was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The auth rules or the webhook said no (`kind` as counted in
    /// `tributary_auth_refused_total`).
    #[error("{reason}")]
    Auth { reason: String, kind: &'static str },
    /// The key is live: on this node (`node` empty), on another node of
    /// the cluster, or somewhere in it (the registry did not say where).
    #[error("stream key is already being published{}", in_use_where(.node))]
    InUse { node: Option<String> },
    #[error("this node has reached its publisher limit")]
    PublisherLimit,
    #[error("this stream has reached its player limit on this node")]
    PlayerLimit,
    #[error("no such stream")]
    NotFound,
    /// The name is not one reading under the naming rule
    /// ([`StreamKey`]); the reason says why.
    #[error("not a stream name: {0}")]
    BadName(String),
    /// A push from this node or another node of its cluster (its connect's
    /// `flashVer` says so): taking it would loop the stream back.
    #[error(
        "{}: node {node} pushes to this cluster itself; refused, it would loop",
        crate::output::push::LOOP_REFUSED
    )]
    Loop { node: String },
}

fn in_use_where(node: &Option<String>) -> String {
    match node.as_deref() {
        None => String::new(),
        Some("") => " in the cluster".into(),
        Some(n) => format!(" on node {n}"),
    }
}

impl Refusal {
    /// The onStatus code the client hears.
    pub fn code(&self, action: Action) -> &'static str {
        match (self, action) {
            (Refusal::InUse { .. } | Refusal::BadName(_), Action::Publish) => {
                "NetStream.Publish.BadName"
            }
            (Refusal::NotFound, _) => "NetStream.Play.StreamNotFound",
            (_, Action::Publish) => "NetStream.Publish.Rejected",
            (_, Action::Play) => "NetStream.Play.Failed",
        }
    }

    /// Whether the connection closes after the answer (an auth refusal or
    /// a name no stream has: the client has nothing more to try here).
    pub fn closes(&self) -> bool {
        matches!(
            self,
            Refusal::Auth { .. } | Refusal::BadName(_) | Refusal::Loop { .. }
        )
    }
}

/// Who asks: the stream as the naming rule read it, the query it was asked
/// with (where tokens live), and the peer.
pub struct Asker<'a> {
    pub conn: u64,
    pub key: &'a StreamKey,
    pub query: &'a str,
    pub peer: SocketAddr,
}

impl Asker<'_> {
    pub fn key(&self) -> StreamKey {
        self.key.clone()
    }
}

/// Unix time in µs (token expiry, the first sequence number of a stream).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A publish that is a push from this process or from another node of its
/// cluster (its connect's `flashVer` names the node and process): a loop.
async fn push_loop(flash_ver: Option<&str>, ctx: &ConnectionContext) -> Option<Refusal> {
    let pusher = crate::output::push::pushed_by(flash_ver?)?;
    let ours = match &ctx.cluster {
        _ if pusher.instance == crate::output::push::instance() => true,
        Some(cluster) => cluster.is_node(pusher.node, pusher.instance).await,
        None => false,
    };
    ours.then(|| Refusal::Loop {
        node: pusher.node.to_owned(),
    })
}

/// Whether a peer at `ip` is this host: loopback, or the one address the
/// node's RTMP listener is bound to (its pipelines connect there, and a
/// connection to an address of this host comes from that address).
fn is_this_host(ip: std::net::IpAddr, rtmp_ip: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback()
        || (!rtmp_ip.is_unspecified() && ip == rtmp_ip.to_canonical())
        // Another address of this host (a listener bound to it: the
        // cluster's recording fetch comes from the media listener's).
        // Only a local address can be bound; asked for the internal
        // credential alone, which is rare.
        || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// The auth rules, then the webhook if one applies; Ok carries the push
/// targets the webhook's answer named (a publish only).
pub async fn authorize(
    action: Action,
    who: &Asker<'_>,
    ctx: &ConnectionContext,
) -> Result<Vec<String>, Refusal> {
    // The node's own pipelines play and publish with its internal
    // credential, from this host: the rules and the webhook are for
    // everyone else.
    if crate::output::pipeline::is_internal(who.query) {
        if is_this_host(who.peer.ip(), ctx.rtmp_ip) {
            return Ok(Vec::new());
        }
        // Never on to the rules and the webhook with the credential in it.
        return Err(Refusal::Auth {
            reason: "the internal credential is for this host's pipelines".into(),
            kind: "bad_token",
        });
    }
    let secs = unix_micros() / 1_000_000;
    if let Err(refusal) = ctx.auth.check(action, who.key, who.query, secs) {
        return Err(Refusal::Auth {
            reason: refusal.to_string(),
            kind: refusal.kind(),
        });
    }
    match &ctx.webhook {
        Some(hook) if hook.applies_to(action) => hook
            .ask(action, who.key, who.query, &who.peer.ip().to_string())
            .await
            .map(|answer| answer.push)
            .map_err(|refusal| Refusal::Auth {
                reason: refusal.0,
                kind: "webhook",
            }),
        _ => Ok(Vec::new()),
    }
}

/// A publish that may start: the hub has it as `id`; `place` holds the
/// node's publisher place until dropped.
pub struct Publishing {
    pub key: StreamKey,
    pub id: StreamId,
    pub place: Ticket,
    /// Push targets the webhook named for it (URLs, not yet checked).
    pub pushes: Vec<String>,
    /// Push targets added over the API that its registry entry kept from
    /// a publish before (a failover).
    pub kept: Vec<String>,
}

/// A publish that may start, through the rules, the loop check (a push
/// from this cluster, by its `flash_ver`), the publisher limit and, in a
/// cluster, the registry claim.
pub async fn publish(
    who: &Asker<'_>,
    flash_ver: Option<&str>,
    out: &Rc<Conn>,
    ctx: &ConnectionContext,
) -> Result<Publishing, Refusal> {
    let pushes = authorize(Action::Publish, who, ctx).await?;
    // After the rules: an unauthorised client cannot make the node ask
    // the registry who its nodes are.
    if let Some(refusal) = push_loop(flash_ver, ctx).await {
        return Err(refusal);
    }
    let mut kept = Vec::new();
    let place = ctx.gate.publisher().map_err(|_| Refusal::PublisherLimit)?;
    let key = who.key();
    if let Some(cluster) = &ctx.cluster {
        // The registry first: a key is live on one node only.
        let takeover = ctx.hub.read(|h| h.takeover());
        match cluster.claim(&key, ctx.shard, takeover).await {
            ClaimResult::Refused(node) => return Err(Refusal::InUse { node: Some(node) }),
            ClaimResult::Registered { pushes } => kept = pushes,
            ClaimResult::Unavailable => {}
        }
    }
    let now = Instant::now();
    let published = ctx
        .hub
        .with(|h| h.publish(&key, who.conn, out.clone(), unix_micros(), now));
    let Some(id) = published else {
        // Live on another shard of this node: give the cluster claim back.
        ctx.hub.with(|h| {
            h.tell_cluster(Request::Unregister {
                key: key.clone(),
                shard: ctx.shard,
            })
        });
        return Err(Refusal::InUse { node: None });
    };
    Ok(Publishing {
        key,
        id,
        place,
        pushes,
        kept,
    })
}

/// A play that may start: where its stream is, and how long to wait for it
/// if it is not live here yet.
pub struct Playing {
    pub key: StreamKey,
    /// Live on this node: attach now.
    pub live: bool,
    /// Not live here: how long the player waits for it (its relay from
    /// another node, or its publisher).
    pub wait: Duration,
    pub place: Ticket,
}

pub async fn play(
    who: &Asker<'_>,
    protocol: Protocol,
    ctx: &ConnectionContext,
) -> Result<Playing, Refusal> {
    authorize(Action::Play, who, ctx).await?;
    let (key, live, wait) = locate(who, ctx).await?;
    let place = ctx
        .gate
        .player(&key, protocol)
        .map_err(|_| Refusal::PlayerLimit)?;
    Ok(Playing {
        key,
        live,
        wait,
        place,
    })
}

/// Where the stream a play names is: live on this node (true), or how long
/// to wait for it (its relay from another node, or its publisher); not
/// found when it is nowhere and plays do not wait.
pub async fn locate(
    who: &Asker<'_>,
    ctx: &ConnectionContext,
) -> Result<(StreamKey, bool, Duration), Refusal> {
    let key = who.key();
    let (mut live, wait) = ctx.hub.read(|h| (h.is_live(&key), h.play_wait()));
    // Not on this node: maybe on another node of the cluster.
    let mut remote = false;
    if let (false, Some(cluster)) = (live, &ctx.cluster) {
        remote = matches!(cluster.locate(&key).await, Located::Remote(_));
        live = ctx.hub.read(|h| h.is_live(&key));
    }
    if !live && !remote && wait.is_none() {
        return Err(Refusal::NotFound);
    }
    let wait = match (remote, wait) {
        (true, w) => w.unwrap_or(RELAY_START_WAIT).max(RELAY_START_WAIT),
        (false, w) => w.unwrap_or(RELAY_START_WAIT),
    };
    Ok((key, live, wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_internal_credential_is_for_this_hosts_pipelines_only() {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let bound = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5));
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mapped_lo = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        assert!(is_this_host(lo, any));
        assert!(is_this_host(IpAddr::V6(Ipv6Addr::LOCALHOST), any));
        assert!(is_this_host(mapped_lo, any), "an IPv4-mapped loopback");
        assert!(is_this_host(bound, bound), "the listener's own address");
        let remote = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 6));
        assert!(!is_this_host(remote, bound));
        assert!(
            !is_this_host(remote, any),
            "listening everywhere: loopback only"
        );
        assert!(!is_this_host(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), any));
    }

    #[test]
    fn refusals_name_their_status_and_where_the_key_is_live() {
        let here = Refusal::InUse { node: None };
        assert_eq!(here.to_string(), "stream key is already being published");
        assert_eq!(here.code(Action::Publish), "NetStream.Publish.BadName");
        let there = Refusal::InUse {
            node: Some("b".into()),
        };
        assert_eq!(
            there.to_string(),
            "stream key is already being published on node b"
        );
        let cluster = Refusal::InUse {
            node: Some(String::new()),
        };
        assert!(cluster.to_string().ends_with(" in the cluster"));
        assert_eq!(
            Refusal::NotFound.code(Action::Play),
            "NetStream.Play.StreamNotFound"
        );
        assert_eq!(
            Refusal::PlayerLimit.code(Action::Play),
            "NetStream.Play.Failed"
        );
        assert_eq!(
            Refusal::PublisherLimit.code(Action::Publish),
            "NetStream.Publish.Rejected"
        );
        let auth = Refusal::Auth {
            reason: "bad token".into(),
            kind: "token",
        };
        assert!(auth.closes() && !Refusal::NotFound.closes());
    }
}
