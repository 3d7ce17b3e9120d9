//! The shard's handle on its hub: every call goes through [`SharedHub::with`],
//! which runs the (deterministic) hub, then moves what it queued in its
//! outbox. Messages for other shards go into the mesh and requests into the
//! cluster's queue, as far as they have room now. What they refuse waits in
//! the outbox (bounded there) for one pump task per destination, which
//! awaits room and keeps each destination's order. Exported media is
//! offered once and dropped, counted, when the cluster's queue is full.
//! Nothing here spawns a task per message.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use glommio::channels::channel_mesh::Senders;
use glommio::{GlommioError, ResourceType};

use crate::cluster::ClusterHandle;

use super::hub::Hub;
use super::hub::ShardMsg;
use super::ring::Notify;

pub struct SharedHub {
    hub: RefCell<Hub>,
    mesh: Rc<Senders<ShardMsg>>,
    cluster: Option<ClusterHandle>,
    /// Per shard: its pump holds a message in flight (later ones wait, to
    /// keep the order).
    busy: Vec<Cell<bool>>,
    wake: Vec<Notify>,
    cluster_busy: Cell<bool>,
    cluster_wake: Notify,
}

impl SharedHub {
    pub fn new(hub: Hub, mesh: Rc<Senders<ShardMsg>>, cluster: Option<ClusterHandle>) -> Rc<Self> {
        let shards = mesh.nr_consumers();
        Rc::new(Self {
            hub: RefCell::new(hub),
            mesh,
            cluster,
            busy: (0..shards).map(|_| Cell::new(false)).collect(),
            wake: (0..shards).map(|_| Notify::default()).collect(),
            cluster_busy: Cell::new(false),
            cluster_wake: Notify::default(),
        })
    }

    /// Runs `f` on the hub, then sends what it queued.
    pub fn with<R>(&self, f: impl FnOnce(&mut Hub) -> R) -> R {
        let r = f(&mut self.hub.borrow_mut());
        self.flush();
        r
    }

    /// Reads the hub without changing it.
    pub fn read<R>(&self, f: impl FnOnce(&Hub) -> R) -> R {
        f(&self.hub.borrow())
    }

    fn flush(&self) {
        let mut hub = self.hub.borrow_mut();
        let out = hub.outbox();
        for shard in 0..self.busy.len() {
            if self.busy[shard].get() || !out.has_for(shard) {
                continue;
            }
            while let Some(msg) = out.pop_shard(shard) {
                match self.mesh.try_send_to(shard, msg) {
                    Ok(()) => {}
                    Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                        out.unpop_shard(shard, msg);
                        self.wake[shard].notify();
                        break;
                    }
                    // A closed peer (shutdown) takes nothing more.
                    Err(_) => {}
                }
            }
        }
        let Some(cluster) = &self.cluster else {
            return;
        };
        while let Some(export) = out.pop_export() {
            cluster.export(export);
        }
        if !self.cluster_busy.get() {
            while let Some(req) = out.pop_request() {
                if let Err(req) = cluster.try_request(req) {
                    out.unpop_request(req);
                    self.cluster_wake.notify();
                    break;
                }
            }
        }
    }

    /// Starts the pump tasks: one per other shard, one for the cluster.
    pub fn spawn_pumps(self: &Rc<Self>, me: usize) {
        for shard in 0..self.busy.len() {
            if shard == me {
                continue;
            }
            let this = self.clone();
            glommio::spawn_local(async move {
                loop {
                    this.wake[shard].wait().await;
                    this.busy[shard].set(true);
                    loop {
                        let msg = this.hub.borrow_mut().outbox().pop_shard(shard);
                        let Some(msg) = msg else { break };
                        if this.mesh.send_to(shard, msg).await.is_err() {
                            // The peer is gone (shutdown).
                            break;
                        }
                    }
                    this.busy[shard].set(false);
                }
            })
            .detach();
        }
        if let Some(cluster) = self.cluster.clone() {
            let this = self.clone();
            glommio::spawn_local(async move {
                loop {
                    this.cluster_wake.wait().await;
                    this.cluster_busy.set(true);
                    loop {
                        let req = this.hub.borrow_mut().outbox().pop_request();
                        let Some(req) = req else { break };
                        cluster.request(req).await;
                    }
                    this.cluster_busy.set(false);
                }
            })
            .detach();
        }
    }
}
