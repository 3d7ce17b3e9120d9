//! Node-wide admission limits: connections in all and per client address,
//! RTMPT sessions in all and per client address, publishers, and players
//! per stream. Consulted on accept, publish and
//! play (rare paths; a mutex is fine), never per message. Each admission
//! is a ticket that gives its place back when dropped, so a connection's
//! end, however it happens, frees what it held.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::stream::{Audience, Protocol, StreamKey};

/// What a limit refused, as counted and exported.
pub const REFUSED_KINDS: [&str; 6] = [
    "node_connections",
    "ip_connections",
    "publishers",
    "stream_players",
    "node_rtmpt_sessions",
    "ip_rtmpt_sessions",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NodeConnections,
    IpConnections,
    Publishers,
    StreamPlayers,
    NodeTunnels,
    IpTunnels,
}

impl Refused {
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The limits; 0 = none.
#[derive(Debug, Clone, Copy, Default)]
pub struct GateLimits {
    pub connections: u64,
    pub connections_per_ip: u32,
    pub publishers: u64,
    pub players_per_stream: u32,
    /// RTMPT sessions (each an RTMP connection tunnelled in HTTP).
    pub tunnels: u64,
    pub tunnels_per_ip: u32,
}

#[derive(Debug, Default)]
pub struct Gate {
    limits: GateLimits,
    connections: AtomicU64,
    publishers: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    tunnels: AtomicU64,
    tunnels_per_ip: Mutex<HashMap<IpAddr, u32>>,
    /// Players per stream, by protocol (shared with the admin plane and
    /// the cluster's control thread, which read it).
    audience: Arc<Audience>,
    /// Refusals, indexed like [`REFUSED_KINDS`].
    pub refused: [AtomicU64; 6],
}

/// A place taken; given back on drop.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<Gate>,
    kind: TicketKind,
}

#[derive(Debug)]
enum TicketKind {
    Connection(IpAddr),
    Tunnel(IpAddr),
    Publisher,
    Player(StreamKey, Protocol),
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let gate = &self.gate;
        match &self.kind {
            TicketKind::Connection(ip) => {
                gate.connections.fetch_sub(1, Ordering::Relaxed);
                if gate.limits.connections_per_ip > 0 {
                    give_back(&gate.per_ip, ip);
                }
            }
            TicketKind::Tunnel(ip) => {
                gate.tunnels.fetch_sub(1, Ordering::Relaxed);
                if gate.limits.tunnels_per_ip > 0 {
                    give_back(&gate.tunnels_per_ip, ip);
                }
            }
            TicketKind::Publisher => {
                gate.publishers.fetch_sub(1, Ordering::Relaxed);
            }
            TicketKind::Player(key, protocol) => gate.audience.leave(key, *protocol),
        }
    }
}

/// Gives `ip`'s place in `per_ip` back.
fn give_back(per_ip: &Mutex<HashMap<IpAddr, u32>>, ip: &IpAddr) {
    let mut per_ip = per_ip.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = per_ip.get_mut(ip) {
        *n -= 1;
        if *n == 0 {
            per_ip.remove(ip);
        }
    }
}

/// Takes one place for `ip` under `limit` (0 = no limit) in `per_ip`.
fn take_for(per_ip: &Mutex<HashMap<IpAddr, u32>>, ip: IpAddr, limit: u32) -> bool {
    if limit == 0 {
        return true;
    }
    let mut per_ip = per_ip.lock().unwrap_or_else(|e| e.into_inner());
    let n = per_ip.entry(ip).or_insert(0);
    if *n >= limit {
        return false;
    }
    *n += 1;
    true
}

/// Takes one place under `limit` (0 = no limit) of `counter`.
fn take(counter: &AtomicU64, limit: u64) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (limit == 0 || n < limit).then_some(n + 1)
        })
        .is_ok()
}

impl Gate {
    pub fn new(limits: GateLimits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            ..Gate::default()
        })
    }

    fn refuse(&self, why: Refused) -> Refused {
        self.refused[why.index()].fetch_add(1, Ordering::Relaxed);
        why
    }

    /// A new connection from `ip`.
    pub fn connection(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refused> {
        if !take(&self.connections, self.limits.connections) {
            return Err(self.refuse(Refused::NodeConnections));
        }
        if !take_for(&self.per_ip, ip, self.limits.connections_per_ip) {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(self.refuse(Refused::IpConnections));
        }
        Ok(Ticket {
            gate: self.clone(),
            kind: TicketKind::Connection(ip),
        })
    }

    /// A new RTMPT session from `ip`.
    pub fn tunnel(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refused> {
        if !take(&self.tunnels, self.limits.tunnels) {
            return Err(self.refuse(Refused::NodeTunnels));
        }
        if !take_for(&self.tunnels_per_ip, ip, self.limits.tunnels_per_ip) {
            self.tunnels.fetch_sub(1, Ordering::Relaxed);
            return Err(self.refuse(Refused::IpTunnels));
        }
        Ok(Ticket {
            gate: self.clone(),
            kind: TicketKind::Tunnel(ip),
        })
    }

    /// RTMPT sessions open on this node.
    pub fn tunnels(&self) -> u64 {
        self.tunnels.load(Ordering::Relaxed)
    }

    pub fn publisher(self: &Arc<Self>) -> Result<Ticket, Refused> {
        if !take(&self.publishers, self.limits.publishers) {
            return Err(self.refuse(Refused::Publishers));
        }
        Ok(Ticket {
            gate: self.clone(),
            kind: TicketKind::Publisher,
        })
    }

    /// A player of `key` watching over `protocol`; the limit per stream
    /// counts every protocol.
    pub fn player(
        self: &Arc<Self>,
        key: &StreamKey,
        protocol: Protocol,
    ) -> Result<Ticket, Refused> {
        if !self
            .audience
            .join(key, protocol, self.limits.players_per_stream)
        {
            return Err(self.refuse(Refused::StreamPlayers));
        }
        Ok(Ticket {
            gate: self.clone(),
            kind: TicketKind::Player(key.clone(), protocol),
        })
    }

    /// The players of each stream on this node, by protocol.
    pub fn audience(&self) -> &Arc<Audience> {
        &self.audience
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_tickets_give_places_back() {
        let gate = Gate::new(GateLimits {
            connections: 3,
            connections_per_ip: 2,
            publishers: 1,
            players_per_stream: 2,
            tunnels: 2,
            tunnels_per_ip: 1,
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let c1 = gate.connection(a).unwrap();
        let _c2 = gate.connection(a).unwrap();
        assert_eq!(gate.connection(a).unwrap_err(), Refused::IpConnections);
        let _c3 = gate.connection(b).unwrap();
        assert_eq!(gate.connection(b).unwrap_err(), Refused::NodeConnections);
        drop(c1);
        let _c4 = gate.connection(a).unwrap();
        assert_eq!(gate.connections(), 3);

        let p = gate.publisher().unwrap();
        assert_eq!(gate.publisher().unwrap_err(), Refused::Publishers);
        drop(p);
        let _p = gate.publisher().unwrap();

        let key = StreamKey::from("live/x");
        let v1 = gate.player(&key, Protocol::Rtmp).unwrap();
        let v2 = gate.player(&key, Protocol::LlHls).unwrap();
        assert_eq!(
            gate.player(&key, Protocol::HttpFlv).unwrap_err(),
            Refused::StreamPlayers
        );
        let _other = gate
            .player(&StreamKey::from("live/y"), Protocol::Rtmp)
            .unwrap();
        drop(v1);
        let _v3 = gate.player(&key, Protocol::HttpFlv).unwrap();
        let v = gate.audience().of("live/x");
        assert_eq!((v.rtmp, v.http_flv, v.ll_hls), (0, 1, 1));
        drop(v2);
        assert_eq!(gate.audience().of("live/x").ll_hls, 0);
        let t1 = gate.tunnel(a).unwrap();
        assert_eq!(gate.tunnel(a).unwrap_err(), Refused::IpTunnels);
        let _t2 = gate.tunnel(b).unwrap();
        let c: IpAddr = "127.0.0.3".parse().unwrap();
        assert_eq!(gate.tunnel(c).unwrap_err(), Refused::NodeTunnels);
        drop(t1);
        assert_eq!(gate.tunnels(), 1);
        let _t3 = gate.tunnel(a).unwrap();
        assert_eq!(
            gate.refused
                .iter()
                .map(|r| r.load(Ordering::Relaxed))
                .collect::<Vec<_>>(),
            vec![1, 1, 1, 1, 1, 1]
        );
    }

    #[test]
    fn no_limits_admit_everything() {
        let gate = Gate::new(GateLimits::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let tickets: Vec<_> = (0..1000).map(|_| gate.connection(ip).unwrap()).collect();
        assert_eq!(gate.connections(), 1000);
        drop(tickets);
        assert_eq!(gate.connections(), 0);
    }
}
