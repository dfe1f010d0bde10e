//! The switch runtime: ports bound to polling cores, each core running the bridge and
//! the routers, changed live.
//!
//! ```text
//!   core k:  take changes and shared learns (between bursts)
//!            for each (port, queue) it owns:
//!              port.poll_rx(queue) ─► bridge.forward_burst ─► routers ─► staging[out port]
//!              for each out port with frames: out.tx_burst(txq(k), batch, staging)
//!            tell the other cores what it learnt
//! ```
//!
//! Every (port, queue) pair is owned by exactly one core, from the port's creation to its
//! removal (a queue never moves between cores, so no two cores ever poll one ring). Core
//! `k` transmits on queue `k % queue_pairs` of each output port; when two cores share a
//! transmit queue, the queue's cell serialises them per burst.
//!
//! # Live changes
//!
//! [`Switch::apply`] changes ports and routers while the cores run. The control thread
//! checks the whole change first, then posts each core its own copy of the change (its
//! router replicas included) on a channel and raises a shared generation counter. A core
//! reads that counter once per poll; when it moved, the core takes its changes in
//! between two bursts and acknowledges the generation. So only what changed changes:
//! a port added or removed is added to or removed from each core's [`Bridge`] (its FDB
//! entries flushed, nobody else's); a router whose configuration did not change keeps
//! its replica with its neighbour table, and one that did takes over the neighbours its
//! predecessor had resolved. A port removed is closed by the control thread only after
//! every core has acknowledged the change, so no core ever polls a closed port. Nothing
//! is locked per packet.
//!
//! # Many cores, one view
//!
//! Each core owns a replica of the bridge and of every router. With more than one core,
//! what a replica learns that changes its table (a new or moved MAC, a resolved
//! neighbour) is pushed onto every other core's inbox, a bounded lock-free queue, and
//! each core takes its inbox in at the start of its next poll: an address learnt on one
//! core is known to the others a poll later. A full inbox loses the note, and the core
//! then learns the address from frames as before (flooding meanwhile), so the sharing
//! is an optimisation that never affects correctness.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use crossbeam_queue::ArrayQueue;
use pmd::port::{Port, PortStats, RxBatch, TxSel};
use pmd::sched::{spawn_poll_thread, Backoff, CoreLoad, PollTask};

use crate::bridge::{
    stage_into, Bridge, BridgeConfig, DropReason, Learnt, PortFilter, PortId, PortSecurity,
    ToRouter, Vid, VlanMode,
};
use crate::conntrack::{Session, SessionStats, Sessions, Timeouts};
use crate::lb::Services;
use crate::overlay::{Decap, DecapDrop};
use crate::router::{NeighbourNote, RouteDrop, Router, Verdict, GEN_MAX};
use crate::stage::{Routing, Stage, StageConf};
use crate::wire::EthernetAddress;
use pmd::port::LocalFrames;

/// `router_of` entry of a VLAN without a router interface.
const NO_ROUTER: u8 = u8::MAX;

// The router's working copy of a frame holds all of its head copy, which is written back
// from it whole (see `CoreTask::poll`).
const _: () = assert!(pmd::port::HEAD_SNAPSHOT <= GEN_MAX);

/// The most ports one switch serves.
pub const MAX_SWITCH_PORTS: usize = 256;

/// Notes one core's inbox holds (learnt MACs and neighbours from the other cores).
const INBOX: usize = 1024;

/// Changes posted to a core that it has not taken yet, at most.
const PENDING_CHANGES: usize = 16;

/// How long [`Switch::apply`] waits for every core to take a change.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(2);

/// One port of the switch.
pub struct SwitchPort {
    /// The driver.
    pub port: Arc<dyn Port>,
    /// Its VLAN membership.
    pub vlan: VlanMode,
    /// Port security: the only source MAC and addresses it may send from.
    pub security: Option<PortSecurity>,
    /// Security groups: what it may be sent and send.
    pub filter: Option<PortFilter>,
    /// In the split-horizon group: a tunnel to another node (see [`crate::overlay`]).
    pub horizon: bool,
}

/// What the bridge knows of a port.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PortConf {
    vlan: VlanMode,
    security: Option<PortSecurity>,
    filter: Option<PortFilter>,
    horizon: bool,
}

/// Configuration of the switch runtime.
#[derive(Clone, Debug)]
pub struct SwitchConfig {
    /// Polling cores (CPU numbers); `None` entries run unpinned.
    pub cores: Vec<Option<usize>>,
    /// Idle back-off of every polling loop.
    pub backoff: Backoff,
    /// FDB capacity (entries) per core.
    pub fdb_capacity: usize,
    /// FDB entry lifetime.
    pub fdb_max_age: Duration,
    /// Routers between the switch's VLANs, one per tenant (each core runs a replica of
    /// each). A frame for a router MAC goes to the router that has an interface on the
    /// frame's VLAN, and that router forwards only between its own interfaces: routers
    /// are separate routing domains, as VRFs are. No VLAN may be in two routers.
    pub routers: Vec<Router>,
    /// Session-table capacity per core.
    pub sessions: usize,
    /// Session timeouts.
    pub timeouts: Timeouts,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            cores: vec![None],
            backoff: Backoff::default(),
            // As Open vSwitch's default mac-table-size: small enough to stay in cache.
            fdb_capacity: 8192,
            fdb_max_age: Duration::from_secs(300),
            routers: Vec::new(),
            sessions: 131_072,
            timeouts: Timeouts::default(),
        }
    }
}

/// Errors starting or changing the switch.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// No polling core configured.
    #[error("no polling core configured")]
    NoCores,
    /// Too many ports.
    #[error("{0} ports; the switch takes at most {max}", max = MAX_SWITCH_PORTS)]
    TooManyPorts(usize),
    /// A port id outside the table.
    #[error("port id {0} is outside 0..{max}", max = MAX_SWITCH_PORTS)]
    PortId(u16),
    /// The bridge or a router refused its configuration.
    #[error("bridge: {0}")]
    Bridge(String),
    /// A polling core has not taken the changes posted to it.
    #[error("polling core {0} is not taking changes (stuck?)")]
    Stuck(usize),
    /// A polling thread could not start.
    #[error("polling thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Drop counters of the switching logic, summed over cores.
#[derive(Clone, Debug, Default)]
pub struct SwitchStats {
    /// Per port: the driver's counters.
    pub ports: Vec<(String, PortStats)>,
    /// Drops by bridge reason: (reason name, count).
    pub drops: Vec<(&'static str, u64)>,
    /// Floods.
    pub floods: u64,
    /// Addresses and neighbours taken in from other cores.
    pub shared_learns: u64,
    /// Packets the router forwarded.
    pub routed: u64,
    /// Frames the router generated (ARP, ICMP).
    pub router_generated: u64,
    /// Router drops: (reason name, count).
    pub route_drops: Vec<(&'static str, u64)>,
    /// Per polling core, in configuration order.
    pub cores: Vec<CoreStats>,
    /// Frames from the uplink decapsulated.
    pub decapsulated: u64,
    /// Uplink frames not decapsulated: (reason name, count).
    pub decap_drops: Vec<(&'static str, u64)>,
    /// The session tables, summed.
    pub sessions: SessionStats,
    /// Session capacity, all cores.
    pub session_capacity: u64,
    /// The services (their hit counters are live).
    pub services: Services,
}

/// Load of one polling core.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CoreStats {
    /// Polls that found work.
    pub busy_polls: u64,
    /// Polls that found none.
    pub idle_polls: u64,
    /// Frames handled.
    pub packets: u64,
    /// TSC cycles per frame over busy polls.
    pub cycles_per_packet: Option<f64>,
    /// The last configuration generation the core took in.
    pub generation: u64,
    /// The longest time it spent taking in a change (forwarding nothing meanwhile), ns.
    pub longest_change_ns: u64,
    /// How long the core has made no progress (no poll finished), as seen over the
    /// calls to [`Switch::stats`]; zero for a core that polls. A polling core stores its
    /// progress after every poll, so anything above [`STALL_REPORTED`] means it is
    /// stuck inside one poll (an idle core sleeps at most its back-off, 250 µs).
    pub stalled: Duration,
}

/// A core that has made no progress for this long is reported (logged, and flagged in
/// the stats) as stuck.
pub const STALL_REPORTED: Duration = Duration::from_secs(1);

/// Counters a core publishes for the control plane (relaxed stores, one writer).
#[derive(Default)]
struct CoreCounters {
    drops: [AtomicU64; DropReason::COUNT],
    floods: AtomicU64,
    shared: AtomicU64,
    routed: AtomicU64,
    generated: AtomicU64,
    route_drops: [AtomicU64; 5],
    /// The longest time the core spent taking in changes between two bursts, ns.
    change_ns_max: AtomicU64,
    /// Frames from the uplink decapsulated, and dropped by [`DecapDrop`] reason.
    decapsulated: AtomicU64,
    decap_drops: [AtomicU64; DecapDrop::COUNT],
    /// Session table: live, created, expired, removed, table_full.
    sessions: [AtomicU64; 5],
}

/// Frames the router generates during one burst (ARP, ICMP), with their VLANs.
struct Generated {
    frames: LocalFrames,
    vids: [Option<Vid>; pmd::port::BURST],
    scratch: [u8; GEN_MAX],
}

impl Generated {
    fn new() -> Generated {
        Generated {
            frames: LocalFrames::default(),
            vids: [None; pmd::port::BURST],
            scratch: [0u8; GEN_MAX],
        }
    }
}

/// What one core learnt, for the others.
#[derive(Clone, Copy, Debug)]
enum Shared {
    Mac(Learnt),
    Neighbour(NeighbourNote),
    Session(Session),
}

/// One port change, in the order a core applies them.
#[derive(Clone, Debug)]
enum PortOp {
    Add(PortId, PortConf),
    Set(PortId, PortConf),
    Remove(PortId),
}

/// A core's replica of one router in the new router set.
struct RouterOp {
    /// A fresh replica with the new configuration.
    fresh: Router,
    /// The current replica it continues: kept as is when `same`, else its neighbours
    /// are taken over by `fresh`.
    from: Option<usize>,
    /// The configuration did not change.
    same: bool,
}

/// The routers as a core runs them.
struct RouterSet {
    ops: Vec<RouterOp>,
    router_of: Box<[u8; 4096]>,
    macs: Vec<(Vid, EthernetAddress)>,
    groups: Vec<(Vid, EthernetAddress)>,
}

/// One change, as posted to one core.
struct CoreChange {
    generation: u64,
    ports: Vec<Option<Arc<dyn Port>>>,
    ops: Arc<[PortOp]>,
    rxqs: Vec<(usize, u16)>,
    routers: Option<RouterSet>,
    decap: Option<Option<Arc<Decap>>>,
    /// The session stage's configuration, and a new table when its capacity changed.
    stage: Option<(StageConf, Option<Sessions>)>,
}

struct CoreTask {
    rxqs: Vec<(usize, u16)>,
    /// Drivers by port id (`None`: no port).
    ports: Vec<Option<Arc<dyn Port>>>,
    txq: u16,
    bridge: Bridge,
    batch: RxBatch,
    staging: Vec<Vec<TxSel>>,
    routers: Vec<Router>,
    /// Index into `routers` by VLAN; `NO_ROUTER` where no router has an interface.
    router_of: Box<[u8; 4096]>,
    generated: Generated,
    /// Frames the L2 stage hands to the router, per burst (capacity one burst).
    to_router: Vec<ToRouter>,
    start: Instant,
    polls: u32,
    link: Vec<bool>,
    counters: Arc<CoreCounters>,
    /// The generation this core runs, the one posted, and where it acknowledges.
    generation: u64,
    posted: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    changes: Receiver<CoreChange>,
    /// Notes from the other cores, and theirs.
    inbox: Arc<ArrayQueue<Shared>>,
    peers: Vec<Arc<ArrayQueue<Shared>>>,
    shared: u64,
    /// Counters of router replicas replaced or removed: (forwarded, generated, drops).
    retired: (u64, u64, [u64; 5]),
    /// The uplink and its tunnels, on the core that reads the uplink.
    decap: Option<Arc<Decap>>,
    decapsulated: u64,
    decap_drops: [u64; DecapDrop::COUNT],
    /// Sessions: connection tracking for stateful groups and services.
    stage: Stage,
}

impl CoreTask {
    /// Every 64 polls: follow port link changes (one relaxed load per port).
    fn follow_links(&mut self) {
        for (i, p) in self.ports.iter().enumerate() {
            let Some(p) = p else { continue };
            let up = p.is_up();
            if up != self.link[i] {
                self.link[i] = up;
                let _ = self.bridge.set_link(PortId(i as u16), up);
            }
        }
    }

    /// Every 4096 polls: age the FDB a little and publish counters.
    fn housekeeping(&mut self) {
        let now = self.start.elapsed().as_nanos() as u64;
        self.bridge.expire(now, 256);
        self.stage.sessions.expire(now, 4096);
        self.publish();
    }

    fn publish(&self) {
        let c = self.bridge.counters();
        for r in DropReason::ALL {
            self.counters.drops[r.index()].store(c.drops.get(r), Ordering::Relaxed);
        }
        self.counters.floods.store(c.floods, Ordering::Relaxed);
        self.counters.shared.store(self.shared, Ordering::Relaxed);
        self.counters
            .decapsulated
            .store(self.decapsulated, Ordering::Relaxed);
        for (a, v) in self.counters.decap_drops.iter().zip(self.decap_drops) {
            a.store(v, Ordering::Relaxed);
        }
        let st = self.stage.stats();
        for (a, v) in self.counters.sessions.iter().zip([
            st.live,
            st.created,
            st.expired,
            st.removed,
            st.table_full,
        ]) {
            a.store(v, Ordering::Relaxed);
        }
        let (mut fwd, mut gen, mut drops) = self.retired;
        for r in &self.routers {
            let rc = r.counters();
            fwd += rc.forwarded;
            gen += rc.generated;
            for (d, v) in drops.iter_mut().zip(rc.drops) {
                *d += v;
            }
        }
        self.counters.routed.store(fwd, Ordering::Relaxed);
        self.counters.generated.store(gen, Ordering::Relaxed);
        for (a, v) in self.counters.route_drops.iter().zip(drops) {
            a.store(v, Ordering::Relaxed);
        }
    }

    /// Takes every change posted, in order, then acknowledges the last.
    fn take_changes(&mut self) {
        while let Ok(c) = self.changes.try_recv() {
            self.take_change(c);
        }
        self.acked.store(self.generation, Ordering::Release);
    }

    fn take_change(&mut self, c: CoreChange) {
        for op in c.ops.iter() {
            // The control thread checked the change against the same port table, so
            // none of these fails; a refusal would leave that one port as it was.
            let _ = match op {
                PortOp::Remove(id) => self.bridge.remove_port(*id).map(drop),
                PortOp::Add(id, conf) => self
                    .bridge
                    .add_port_with(
                        *id,
                        conf.vlan.clone(),
                        conf.security.clone(),
                        conf.filter.clone(),
                        false,
                    )
                    .and_then(|()| self.bridge.set_horizon(*id, conf.horizon)),
                PortOp::Set(id, conf) => self.conf_port(*id, conf),
            };
            let id = match op {
                PortOp::Remove(id) | PortOp::Add(id, _) | PortOp::Set(id, _) => *id,
            };
            if let (PortOp::Remove(_) | PortOp::Add(..), Some(l)) =
                (op, self.link.get_mut(usize::from(id.0)))
            {
                *l = false;
            }
        }
        let n = c.ports.len();
        self.ports = c.ports;
        self.link.resize(n, false);
        self.staging
            .resize_with(n, || Vec::with_capacity(pmd::port::BURST));
        self.rxqs = c.rxqs;
        if let Some(d) = c.decap {
            self.decap = d;
        }
        if let Some((conf, table)) = c.stage {
            self.stage.set_conf(conf, table);
            self.publish();
        }
        if let Some(set) = c.routers {
            let mut old: Vec<Option<Router>> = std::mem::take(&mut self.routers)
                .into_iter()
                .map(Some)
                .collect();
            let share = !self.peers.is_empty();
            let mut retire = |r: &Router| {
                let c = r.counters();
                self.retired.0 += c.forwarded;
                self.retired.1 += c.generated;
                for (d, v) in self.retired.2.iter_mut().zip(c.drops) {
                    *d += v;
                }
            };
            let routers: Vec<Router> = set
                .ops
                .into_iter()
                .map(|op| {
                    let prev = op.from.and_then(|i| old.get_mut(i)).and_then(Option::take);
                    match prev {
                        Some(r) if op.same => r,
                        prev => {
                            let mut r = op.fresh;
                            if let Some(p) = prev {
                                r.adopt_neighbours(&p);
                                retire(&p);
                            }
                            r.log_learnt(share);
                            r
                        }
                    }
                })
                .collect();
            for r in old.iter().flatten() {
                retire(r);
            }
            self.routers = routers;
            self.router_of = set.router_of;
            self.bridge.set_router_macs(set.macs);
            self.bridge.set_router_groups(set.groups);
        }
        self.generation = c.generation;
    }

    fn conf_port(&mut self, id: PortId, conf: &PortConf) -> Result<(), crate::BridgeError> {
        let cur = self
            .bridge
            .port(id)
            .map(|p| (p.mode().clone(), p.security().cloned()));
        if let Some((mode, sec)) = cur {
            // Each setter flushes the port's FDB entries: only call those that change.
            if mode != conf.vlan {
                self.bridge.set_vlan_mode(id, conf.vlan.clone())?;
            }
            if sec != conf.security {
                self.bridge.set_port_security(id, conf.security.clone())?;
            }
        }
        if self.bridge.port(id).map(|p| p.filter()) != Some(conf.filter.as_ref()) {
            self.bridge.set_ingress_filter(id, conf.filter.clone())?;
        }
        self.bridge.set_horizon(id, conf.horizon)
    }

    /// Takes in what the other cores learnt.
    fn take_shared(&mut self) {
        let now = self.start.elapsed().as_nanos() as u64;
        for _ in 0..INBOX {
            let Some(n) = self.inbox.pop() else { break };
            match n {
                Shared::Mac(l) => {
                    if self.bridge.learn_shared(l, now) {
                        self.shared += 1;
                    }
                }
                Shared::Session(sn) => {
                    if self.stage.active() && self.stage.adopt(sn, now) {
                        self.shared += 1;
                    }
                }
                Shared::Neighbour(nn) => {
                    let k = self.router_of.get(usize::from(nn.vid.get())).copied();
                    if let Some(r) = k.and_then(|k| self.routers.get_mut(usize::from(k))) {
                        r.learn_shared(nn);
                        self.shared += 1;
                    }
                }
            }
        }
        self.counters.shared.store(self.shared, Ordering::Relaxed);
    }

    /// Tells the other cores what this one learnt during the poll.
    fn share_learnt(&mut self) {
        let peers = &self.peers;
        let tell = |n: Shared| {
            for p in peers {
                // A full inbox drops the note: that core learns from frames instead.
                let _ = p.push(n);
            }
        };
        self.bridge.take_learnt(|l| tell(Shared::Mac(l)));
        for s in self.stage.notes.drain(..) {
            tell(Shared::Session(s));
        }
        for r in &mut self.routers {
            r.take_learnt(|n| tell(Shared::Neighbour(n)));
        }
    }
}

impl Drop for CoreTask {
    /// The core stops: publish its last counters.
    fn drop(&mut self) {
        self.publish();
    }
}

/// The stages after L2 over one burst: the router over the frames L2 handed it, one
/// `tx_burst` per output port, then what the routers generated, out through the bridge.
struct L3Stage<'a> {
    ports: &'a [Option<Arc<dyn Port>>],
    txq: u16,
    staging: &'a mut Vec<Vec<TxSel>>,
    routers: &'a mut Vec<Router>,
    router_of: &'a [u8; 4096],
    generated: &'a mut Generated,
    to_router: &'a mut Vec<ToRouter>,
    stage: &'a mut Stage,
}

impl L3Stage<'_> {
    #[inline(always)]
    fn run(&mut self, bridge: &mut Bridge, b: &mut RxBatch, now: u64) {
        let L3Stage {
            ports,
            txq,
            staging,
            routers,
            router_of,
            generated,
            to_router,
            stage,
        } = self;
        let txq = *txq;
        let tracked = stage.active();
        for &ToRouter {
            idx,
            vid,
            l3,
            flooded,
        } in to_router.iter()
        {
            let i = usize::from(idx);
            let len = b.frame_len(i);
            let Some(r) = router_of
                .get(usize::from(vid.get()))
                .and_then(|&k| routers.get_mut(usize::from(k)))
            else {
                continue;
            };
            let g = generated.frames.batch().len();
            let buf = &mut generated.scratch;
            if tracked && !flooded {
                match stage.to_router(i, vid, b, r, now, buf) {
                    Routing::Route => {}
                    Routing::Reply(n) => {
                        if generated.frames.push(&buf[..n.min(GEN_MAX)]) {
                            generated.vids[g] = Some(vid);
                        }
                        continue;
                    }
                    Routing::Drop => continue,
                }
            }
            let l3 = usize::from(l3);
            let head = b.head(i);
            // The router reads a working copy (up to GEN_MAX bytes: head first, so
            // what was decided on stays what is sent, then the rest read once from
            // the frame) when it needs more than the head (ICMP and ICMPv6:
            // neighbour discovery, echo), and always for a frame that was also
            // flooded: that one's head is staged for its own VLAN and must not be
            // rewritten. Otherwise it rewrites the head in place.
            let icmp = (head.get(l3 - 2..l3) == Some(&[0x86, 0xdd][..])
                && head.get(l3 + 6) == Some(&58))
                || (head.get(l3 - 2..l3) == Some(&[0x08, 0x00][..])
                    && head.get(l3 + 9) == Some(&1));
            let verdict = if flooded || (icmp && len > head.len()) {
                let mut work = [0u8; GEN_MAX];
                let n = len.min(GEN_MAX);
                let h = head.len().min(n);
                work[..h].copy_from_slice(&head[..h]);
                if let Some(rest) = b.frame(i).get(h, n - h) {
                    rest.read_into(&mut work[h..n]);
                }
                let v = r.input(vid, &mut work[..n], l3, now, buf);
                match v {
                    // A flooded frame is never routed (the router refuses too).
                    Verdict::Forward { .. } if flooded => Verdict::Drop(RouteDrop::ForUs),
                    Verdict::Forward { .. } => {
                        b.head_mut(i).copy_from_slice(&work[..h]);
                        v
                    }
                    v => v,
                }
            } else {
                r.input(vid, b.head_mut(i), l3, now, buf)
            };
            match verdict {
                Verdict::Forward { vid } if tracked => {
                    let _ = bridge.forward_routed_tracked(
                        vid,
                        b.head(i),
                        len,
                        now,
                        &mut stage.tracks[i],
                        &mut stage_into(staging, i),
                    );
                }
                Verdict::Forward { vid } => {
                    let _ = bridge.forward_routed(
                        vid,
                        b.head(i),
                        len,
                        now,
                        &mut stage_into(staging, i),
                    );
                }
                Verdict::Reply { vid, len } => {
                    if generated.frames.push(&buf[..len.min(GEN_MAX)]) {
                        generated.vids[g] = Some(vid);
                    }
                }
                Verdict::Drop(_) => {}
            }
        }
        for (o, sel) in staging.iter_mut().enumerate() {
            if !sel.is_empty() {
                if let Some(Some(p)) = ports.get(o) {
                    p.tx_burst(txq, b, sel);
                }
                sel.clear();
            }
        }
        // What the router generated: out through the bridge like any frame.
        let gb = generated.frames.batch();
        if gb.is_empty() {
            return;
        }
        for k in 0..gb.len() {
            let Some(vid) = generated.vids[k] else {
                continue;
            };
            let _ = bridge.forward_routed(
                vid,
                gb.head(k),
                gb.frame_len(k),
                now,
                &mut stage_into(staging, k),
            );
        }
        for (o, sel) in staging.iter_mut().enumerate() {
            if !sel.is_empty() {
                if let Some(Some(p)) = ports.get(o) {
                    p.tx_burst(txq, gb, sel);
                }
                sel.clear();
            }
        }
        generated.frames.clear();
    }
}

impl PollTask for CoreTask {
    fn poll(&mut self) -> usize {
        self.polls = self.polls.wrapping_add(1);
        // Links are followed every 64 polls, and at once when a port this core still sees
        // as down has come up: a guest's first frames (ARP, DHCP) follow its DRIVER_OK by
        // microseconds and must not be dropped as `port_down`. Ports already up cost one
        // branch each here.
        if self.posted.load(Ordering::Acquire) != self.generation {
            // What a change costs the traffic: the core forwards nothing meanwhile.
            let t = Instant::now();
            self.take_changes();
            let ns = t.elapsed().as_nanos() as u64;
            self.counters.change_ns_max.fetch_max(ns, Ordering::Relaxed);
        }
        let came_up = self
            .link
            .iter()
            .zip(self.ports.iter())
            .any(|(&known, p)| !known && p.as_ref().is_some_and(|p| p.is_up()));
        if came_up || self.polls.is_multiple_of(64) {
            self.follow_links();
            if self.polls.is_multiple_of(4096) {
                self.housekeeping();
            }
        }
        // After the links: a note may name a port that has just come up.
        if !self.inbox.is_empty() {
            self.take_shared();
        }
        let CoreTask {
            rxqs,
            ports,
            txq,
            bridge,
            batch,
            staging,
            routers,
            router_of,
            generated,
            start,
            to_router,
            decap,
            decapsulated,
            decap_drops,
            stage,
            ..
        } = self;
        let ports: &Vec<Option<Arc<dyn Port>>> = ports;
        let mut l3 = L3Stage {
            ports,
            txq: *txq,
            staging,
            routers,
            router_of,
            generated,
            to_router,
            stage,
        };
        let mut total = 0;
        for &(pi, q) in rxqs.iter() {
            let inp = PortId(pi as u16);
            let Some(port) = ports.get(pi).and_then(Option::as_ref) else {
                continue;
            };
            total += port.poll_rx(q, batch, &mut |b: &mut RxBatch| {
                let now = start.elapsed().as_nanos() as u64;
                // Stage L2 over the whole burst; then L3 over the frames it handed on.
                l3.to_router.clear();
                if l3.stage.active() {
                    let n = b.len();
                    l3.stage.lookup(bridge, inp, b, 0..n, now);
                    bridge.forward_range_tracked(
                        inp,
                        b,
                        0..n,
                        now,
                        l3.staging,
                        l3.to_router,
                        &mut l3.stage.tracks,
                    );
                    l3.stage.translate(b, 0..n, now);
                    l3.run(bridge, b, now);
                    l3.stage.commit(0..n, now);
                    return;
                }
                bridge.forward_burst(inp, b, now, l3.staging, l3.to_router);
                l3.run(bridge, b, now);
            });
        }
        if let Some(d) = decap.as_ref() {
            total += d.uplink.port.poll_rx(0, batch, &mut |b: &mut RxBatch| {
                let now = start.elapsed().as_nanos() as u64;
                let n = b.len();
                // Each frame's tunnel port, its outer headers stripped in place.
                let mut from = [None; pmd::port::BURST];
                for (i, f) in from.iter_mut().enumerate().take(n) {
                    match d.classify(b.head(i), b.frame_len(i)) {
                        Ok((p, outer)) => {
                            if b.strip_front(i, outer) {
                                *f = Some(p);
                            } else {
                                decap_drops[DecapDrop::NotVxlan as usize] += 1;
                            }
                        }
                        Err(why) => decap_drops[why as usize] += 1,
                    }
                }
                l3.to_router.clear();
                if l3.stage.active() {
                    l3.stage.clear(0..n);
                }
                let mut i = 0;
                while i < n {
                    let Some(p) = from[i] else {
                        i += 1;
                        continue;
                    };
                    let mut j = i + 1;
                    while j < n && from[j] == Some(p) {
                        j += 1;
                    }
                    *decapsulated += (j - i) as u64;
                    if l3.stage.active() {
                        l3.stage.lookup(bridge, p, b, i..j, now);
                        bridge.forward_range_tracked(
                            p,
                            b,
                            i..j,
                            now,
                            l3.staging,
                            l3.to_router,
                            &mut l3.stage.tracks,
                        );
                        l3.stage.translate(b, i..j, now);
                    } else {
                        bridge.forward_range(p, b, i..j, now, l3.staging, l3.to_router);
                    }
                    i = j;
                }
                // Another node's pods ask their own node's router for the gateway (every
                // node has one, with the same address and MAC): a broadcast ARP or a
                // neighbour solicitation that came through a tunnel is delivered to
                // the pods here but not answered.
                l3.to_router.retain(|t| !t.flooded);
                l3.run(bridge, b, now);
                if l3.stage.active() {
                    l3.stage.commit(0..n, now);
                }
            });
        }
        if !self.peers.is_empty() {
            self.share_learnt();
        }
        total
    }
}

/// One change to a running switch: ports set or removed by id, and optionally the whole
/// router set.
#[derive(Default)]
pub struct Change {
    /// Ports to add, reconfigure (same driver) or replace (another driver), by id.
    pub set: Vec<(PortId, SwitchPort)>,
    /// Ports to remove.
    pub remove: Vec<PortId>,
    /// The new routers, in order, if they change.
    pub routers: Option<Vec<RouterChange>>,
    /// The uplink's decapsulation, if it changes (`Some(None)` removes it). The first
    /// polling core reads the uplink.
    pub decap: Option<Option<Arc<Decap>>>,
    /// The services and the session table's size and timeouts, if they change.
    pub sessions: Option<SessionChange>,
}

/// The services and session table of a change.
#[derive(Clone)]
pub struct SessionChange {
    /// The services.
    pub services: Services,
    /// Sessions per core (a change replaces every core's table, and loses its sessions).
    pub capacity: usize,
    /// Timeouts.
    pub timeouts: Timeouts,
}

/// One router of a new router set.
pub struct RouterChange {
    /// The router with its new configuration (no neighbours yet).
    pub router: Router,
    /// The index of the router it continues in the current set, if any: its replicas
    /// keep running when `same`, and otherwise hand their resolved neighbours over.
    pub from: Option<usize>,
    /// Its configuration equals the current router `from`'s.
    pub same: bool,
}

/// A port as the control thread keeps it.
struct Slot {
    port: Arc<dyn Port>,
    conf: PortConf,
    /// Core of each receive queue.
    queues: Vec<usize>,
}

struct CoreHandle {
    changes: Sender<CoreChange>,
    acked: Arc<AtomicU64>,
    load: Arc<CoreLoad>,
    counters: Arc<CoreCounters>,
    /// The watchdog's view: the last progress seen, since when, and whether the stall
    /// was reported.
    watch: Mutex<(u64, Instant, bool)>,
}

impl CoreHandle {
    /// How long the core has shown no progress (polls completed).
    fn stalled(&self, core: usize) -> Duration {
        let progress = self.load.progress.load(Ordering::Relaxed);
        let mut w = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if progress != w.0 {
            if w.2 {
                tracing::warn!("polling core {core} is making progress again");
            }
            *w = (progress, now, false);
            return Duration::ZERO;
        }
        let stalled = now - w.1;
        if stalled >= STALL_REPORTED && !w.2 {
            w.2 = true;
            tracing::error!(
                "polling core {core} has made no progress for {:.1} s: every port it \
                 polls is stopped",
                stalled.as_secs_f64()
            );
        }
        stalled
    }
}

/// A running switch; stops its cores when dropped.
pub struct Switch {
    cfg: SwitchConfig,
    slots: Vec<Option<Slot>>,
    /// The routers' configurations (never polled; each core runs its own replicas).
    routers: Vec<Router>,
    cores: Vec<CoreHandle>,
    posted: Arc<AtomicU64>,
    generation: u64,
    /// Ports removed, closed once every core has taken generation `.0`.
    retired: Vec<(u64, Arc<dyn Port>)>,
    /// The uplink's decapsulation the first core runs.
    decap: Option<Arc<Decap>>,
    /// The services and session table every core runs.
    sessions: SessionChange,
    /// Whether the cores have tables of `sessions.capacity` (they start with small
    /// ones, and get full-sized ones when something first needs sessions).
    tables: bool,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// `router_of`, router MACs and solicited-node groups of a router set.
type RouterTables = (
    Box<[u8; 4096]>,
    Vec<(Vid, EthernetAddress)>,
    Vec<(Vid, EthernetAddress)>,
);

fn router_tables(routers: &[Router]) -> Result<RouterTables, SwitchError> {
    if routers.len() >= usize::from(NO_ROUTER) {
        return Err(SwitchError::Bridge(format!(
            "{} routers; the switch takes at most {}",
            routers.len(),
            NO_ROUTER - 1
        )));
    }
    let mut router_of = Box::new([NO_ROUTER; 4096]);
    for (k, r) in routers.iter().enumerate() {
        for i in r.interfaces() {
            let slot = &mut router_of[usize::from(i.vid.get())];
            if *slot != NO_ROUTER {
                return Err(SwitchError::Bridge(format!(
                    "VLAN {} has an interface in two routers",
                    i.vid.get()
                )));
            }
            *slot = k as u8;
        }
    }
    let ifs = || routers.iter().flat_map(|r| r.interfaces().iter());
    let macs = ifs().map(|i| (i.vid, i.mac)).collect();
    let groups = ifs()
        .filter_map(|i| i.solicited_node_mac().map(|m| (i.vid, m)))
        .collect();
    Ok((router_of, macs, groups))
}

impl Switch {
    /// Starts the polling cores with `cfg`'s routers and `ports` (ids 0, 1, …).
    pub fn start(cfg: &SwitchConfig, ports: Vec<SwitchPort>) -> Result<Switch, SwitchError> {
        if ports.len() > MAX_SWITCH_PORTS {
            return Err(SwitchError::TooManyPorts(ports.len()));
        }
        let mut sw = Switch::new(cfg)?;
        sw.apply(Change {
            set: ports
                .into_iter()
                .enumerate()
                .map(|(i, p)| (PortId(i as u16), p))
                .collect(),
            ..Change::default()
        })?;
        Ok(sw)
    }

    /// Starts the polling cores with `cfg`'s routers and no ports.
    pub fn new(cfg: &SwitchConfig) -> Result<Switch, SwitchError> {
        if cfg.cores.is_empty() {
            return Err(SwitchError::NoCores);
        }
        let (router_of, macs, groups) = router_tables(&cfg.routers)?;
        let bcfg = BridgeConfig {
            max_ports: MAX_SWITCH_PORTS as u16,
            fdb_capacity: cfg.fdb_capacity,
            fdb_max_age: cfg.fdb_max_age.as_nanos() as u64,
        };
        let ncores = cfg.cores.len();
        let inboxes: Vec<Arc<ArrayQueue<Shared>>> = (0..ncores)
            .map(|_| Arc::new(ArrayQueue::new(INBOX)))
            .collect();
        let posted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut sw = Switch {
            cfg: SwitchConfig {
                routers: Vec::new(),
                ..cfg.clone()
            },
            slots: Vec::new(),
            routers: cfg.routers.clone(),
            cores: Vec::new(),
            posted: posted.clone(),
            generation: 0,
            retired: Vec::new(),
            decap: None,
            sessions: SessionChange {
                services: Services::default(),
                capacity: cfg.sessions,
                timeouts: cfg.timeouts,
            },
            tables: false,
            stop: stop.clone(),
            threads: Vec::new(),
        };
        // One clock for every core: sessions move between their tables.
        let epoch = Instant::now();
        let conf = sw.stage_conf(&cfg.routers);
        for (ci, core) in cfg.cores.iter().enumerate() {
            let mut bridge = Bridge::new(bcfg).map_err(|e| SwitchError::Bridge(e.to_string()))?;
            bridge.set_router_macs(macs.clone());
            bridge.set_router_groups(groups.clone());
            bridge.log_learnt(ncores > 1);
            let mut routers = cfg.routers.clone();
            for r in &mut routers {
                r.log_learnt(ncores > 1);
            }
            let (tx, rx) = crossbeam_channel::bounded(PENDING_CHANGES);
            let counters = Arc::new(CoreCounters::default());
            let load = Arc::new(CoreLoad::default());
            let acked = Arc::new(AtomicU64::new(0));
            let task = CoreTask {
                rxqs: Vec::new(),
                ports: Vec::new(),
                txq: ci as u16,
                bridge,
                batch: RxBatch::default(),
                routers,
                router_of: router_of.clone(),
                generated: Generated::new(),
                to_router: Vec::with_capacity(pmd::port::BURST),
                staging: Vec::new(),
                start: epoch,
                polls: 4095,
                link: Vec::new(),
                counters: counters.clone(),
                generation: 0,
                posted: posted.clone(),
                acked: acked.clone(),
                changes: rx,
                inbox: inboxes[ci].clone(),
                peers: inboxes
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| *k != ci)
                    .map(|(_, q)| q.clone())
                    .collect(),
                shared: 0,
                retired: (0, 0, [0; 5]),
                decap: None,
                decapsulated: 0,
                decap_drops: [0; DecapDrop::COUNT],
                stage: {
                    let mut st = Stage::new(16, conf.clone());
                    st.share = ncores > 1;
                    st
                },
            };
            let h = spawn_poll_thread(
                format!("pmd{ci}"),
                *core,
                cfg.backoff,
                Box::new(task),
                stop.clone(),
                load.clone(),
            )?;
            sw.threads.push(h);
            sw.cores.push(CoreHandle {
                changes: tx,
                acked,
                load,
                counters,
                watch: Mutex::new((0, Instant::now(), false)),
            });
        }
        Ok(sw)
    }

    /// The lowest port id not in use.
    pub fn free_port_id(&self) -> Option<PortId> {
        let i = self
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.slots.len());
        (i < MAX_SWITCH_PORTS).then_some(PortId(i as u16))
    }

    /// The driver of port `id`.
    pub fn port(&self, id: PortId) -> Option<&Arc<dyn Port>> {
        self.slots
            .get(usize::from(id.0))
            .and_then(Option::as_ref)
            .map(|s| &s.port)
    }

    /// The configuration generation running (one per [`apply`](Self::apply)).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Applies `change` while the cores run, and waits (up to [`CHANGE_TIMEOUT`]) until
    /// every core runs it; returns how long that took (a core that is slower takes it
    /// later; see [`lagging_core`](Self::lagging_core)). The whole change is checked
    /// first: on an error nothing changed.
    pub fn apply(&mut self, change: Change) -> Result<Duration, SwitchError> {
        let t0 = Instant::now();
        self.close_retired();
        let ncores = self.cores.len();
        for (k, c) in self.cores.iter().enumerate() {
            if c.changes.len() >= PENDING_CHANGES - 1 {
                return Err(SwitchError::Stuck(k));
            }
        }
        // Check: ids in range, the router set consistent.
        for id in change
            .remove
            .iter()
            .chain(change.set.iter().map(|(id, _)| id))
        {
            if usize::from(id.0) >= MAX_SWITCH_PORTS {
                return Err(SwitchError::PortId(id.0));
            }
        }
        let tables = match &change.routers {
            Some(rs) => {
                let routers: Vec<Router> = rs.iter().map(|r| r.router.clone()).collect();
                Some((router_tables(&routers)?, routers))
            }
            None => None,
        };
        // The new port table and the ops that lead there.
        let mut slots: Vec<Option<Slot>> = std::mem::take(&mut self.slots);
        let mut ops = Vec::new();
        let mut closing = Vec::new();
        for id in &change.remove {
            if let Some(s) = slots.get_mut(usize::from(id.0)).and_then(Option::take) {
                ops.push(PortOp::Remove(*id));
                closing.push(s.port);
            }
        }
        let mut load = vec![0usize; ncores];
        for s in slots.iter().flatten() {
            for &c in &s.queues {
                load[c] += 1;
            }
        }
        for (id, sp) in change.set {
            let i = usize::from(id.0);
            if slots.len() <= i {
                slots.resize_with(i + 1, || None);
            }
            let conf = PortConf {
                vlan: sp.vlan,
                security: sp.security,
                filter: sp.filter,
                horizon: sp.horizon,
            };
            match &mut slots[i] {
                Some(s) if Arc::ptr_eq(&s.port, &sp.port) => {
                    if s.conf != conf {
                        ops.push(PortOp::Set(id, conf.clone()));
                        s.conf = conf;
                    }
                }
                slot => {
                    if let Some(old) = slot.take() {
                        ops.push(PortOp::Remove(id));
                        for &c in &old.queues {
                            load[c] -= 1;
                        }
                        closing.push(old.port);
                    }
                    // Each receive queue to the least loaded core, for the port's life.
                    let queues = (0..sp.port.queue_pairs())
                        .map(|_| {
                            let (c, _) = load
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, n)| **n)
                                .unwrap_or((0, &0));
                            load[c] += 1;
                            c
                        })
                        .collect();
                    ops.push(PortOp::Add(id, conf.clone()));
                    *slot = Some(Slot {
                        port: sp.port,
                        conf,
                        queues,
                    });
                }
            }
        }
        while slots.last().is_some_and(Option::is_none) {
            slots.pop();
        }
        // Ids were checked to be below MAX_SWITCH_PORTS, so the table holds no more.
        self.slots = slots;
        if ops.is_empty() && tables.is_none() && change.decap.is_none() && change.sessions.is_none()
        {
            return Ok(t0.elapsed());
        }
        let new_capacity = change
            .sessions
            .as_ref()
            .is_some_and(|c| c.capacity != self.sessions.capacity);
        if let Some(c) = change.sessions {
            self.sessions = c;
        }
        let stage_routers: Vec<Router> = match &tables {
            Some((_, routers)) => routers.clone(),
            None => self.routers.clone(),
        };
        let conf = self.stage_conf(&stage_routers);
        if new_capacity {
            self.tables = false;
        }
        let new_tables = conf.active && !self.tables;
        self.tables |= new_tables;
        if let Some(d) = &change.decap {
            self.decap = d.clone();
        }
        // Post each core its copy.
        self.generation += 1;
        let generation = self.generation;
        let ops: Arc<[PortOp]> = ops.into();
        let drivers: Vec<Option<Arc<dyn Port>>> = self
            .slots
            .iter()
            .map(|s| s.as_ref().map(|s| s.port.clone()))
            .collect();
        let share = ncores > 1;
        for (k, core) in self.cores.iter().enumerate() {
            let rxqs = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
                .flat_map(|(i, s)| {
                    s.queues
                        .iter()
                        .enumerate()
                        .filter(move |(_, c)| **c == k)
                        .map(move |(q, _)| (i, q as u16))
                })
                .collect();
            let routers = match (&tables, &change.routers) {
                (Some(((of, macs, groups), _)), Some(rs)) => Some(RouterSet {
                    ops: rs
                        .iter()
                        .map(|r| {
                            let mut fresh = r.router.clone();
                            fresh.log_learnt(share);
                            RouterOp {
                                fresh,
                                from: r.from,
                                same: r.same,
                            }
                        })
                        .collect(),
                    router_of: of.clone(),
                    macs: macs.clone(),
                    groups: groups.clone(),
                }),
                _ => None,
            };
            let c = CoreChange {
                generation,
                ports: drivers.clone(),
                ops: ops.clone(),
                rxqs,
                routers,
                // The first core reads the uplink; the others never do.
                decap: match &change.decap {
                    Some(d) if k == 0 => Some(d.clone()),
                    _ => None,
                },
                stage: Some((
                    conf.clone(),
                    new_tables.then(|| Sessions::new(self.sessions.capacity, conf.timeouts)),
                )),
            };
            match core.changes.try_send(c) {
                Ok(()) => {}
                // Checked above: only this thread sends, and every core had room.
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    return Err(SwitchError::Stuck(k))
                }
            }
        }
        if let Some((_, routers)) = tables {
            self.routers = routers;
        }
        self.retired
            .extend(closing.into_iter().map(|p| (generation, p)));
        self.posted.store(generation, Ordering::Release);
        let deadline = t0 + CHANGE_TIMEOUT;
        while self.lagging(generation).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(20));
        }
        self.close_retired();
        // A core that has not taken the change yet will take it when it polls again:
        // the change is made either way (and its removed ports stay open until then).
        if let Some(k) = self.lagging(generation) {
            tracing::warn!(
                "polling core {k} has not taken configuration {generation} in {:?}",
                CHANGE_TIMEOUT
            );
        }
        Ok(t0.elapsed())
    }

    /// The first polling core that has not taken the last change yet, if any.
    pub fn lagging_core(&self) -> Option<usize> {
        self.lagging(self.generation)
    }

    /// The first core that has not taken `generation` yet.
    fn lagging(&self, generation: u64) -> Option<usize> {
        self.cores
            .iter()
            .position(|c| c.acked.load(Ordering::Acquire) < generation)
    }

    /// Closes the removed ports every core has let go of.
    fn close_retired(&mut self) {
        let done = self
            .cores
            .iter()
            .map(|c| c.acked.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX);
        self.retired.retain(|(g, _)| *g > done);
    }

    /// The session stage's configuration for `routers` and the ports and services now.
    fn stage_conf(&self, routers: &[Router]) -> StageConf {
        let mut zone_of = [0u16; 4096];
        for (v, z) in zone_of.iter_mut().enumerate() {
            *z = v as u16;
        }
        for r in routers {
            let z = crate::service::spec::zone_of_router(r);
            for i in r.interfaces() {
                zone_of[usize::from(i.vid.get())] = z;
            }
        }
        let stateful = self.slots.iter().flatten().any(|s| {
            s.conf
                .filter
                .as_ref()
                .is_some_and(|f| f.stateful && f.filters())
        });
        StageConf {
            services: self.sessions.services.clone(),
            zone_of: Arc::new(zone_of),
            active: stateful || !self.sessions.services.is_empty(),
            timeouts: self.sessions.timeouts,
        }
    }

    /// The routers' configurations, in order.
    pub fn routers(&self) -> &[Router] {
        &self.routers
    }

    /// Counters of ports, bridge and cores.
    pub fn stats(&self) -> SwitchStats {
        let mut drops = [0u64; DropReason::COUNT];
        let (mut floods, mut shared, mut routed, mut generated) = (0, 0, 0, 0);
        let mut rdrops = [0u64; 5];
        let (mut decapsulated, mut ddrops) = (0u64, [0u64; DecapDrop::COUNT]);
        let mut sessions = SessionStats::default();
        for c in self.cores.iter().map(|c| &c.counters) {
            let v = |k: usize| c.sessions[k].load(Ordering::Relaxed);
            sessions.live += v(0);
            sessions.created += v(1);
            sessions.expired += v(2);
            sessions.removed += v(3);
            sessions.table_full += v(4);
            decapsulated += c.decapsulated.load(Ordering::Relaxed);
            for (d, a) in ddrops.iter_mut().zip(c.decap_drops.iter()) {
                *d += a.load(Ordering::Relaxed);
            }
            for (d, a) in drops.iter_mut().zip(c.drops.iter()) {
                *d += a.load(Ordering::Relaxed);
            }
            floods += c.floods.load(Ordering::Relaxed);
            shared += c.shared.load(Ordering::Relaxed);
            routed += c.routed.load(Ordering::Relaxed);
            generated += c.generated.load(Ordering::Relaxed);
            for (d, a) in rdrops.iter_mut().zip(c.route_drops.iter()) {
                *d += a.load(Ordering::Relaxed);
            }
        }
        SwitchStats {
            ports: self
                .slots
                .iter()
                .flatten()
                .map(|s| (s.port.name().to_string(), s.port.stats()))
                .collect(),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.as_str(), drops[r.index()]))
                .collect(),
            floods,
            shared_learns: shared,
            routed,
            router_generated: generated,
            route_drops: RouteDrop::ALL
                .iter()
                .map(|r| (r.as_str(), rdrops[r.index()]))
                .collect(),
            cores: self
                .cores
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let l = &c.load;
                    CoreStats {
                        busy_polls: l.busy_polls.load(Ordering::Relaxed),
                        idle_polls: l.idle_polls.load(Ordering::Relaxed),
                        packets: l.packets.load(Ordering::Relaxed),
                        cycles_per_packet: l.cycles_per_packet(),
                        generation: c.acked.load(Ordering::Relaxed),
                        longest_change_ns: c.counters.change_ns_max.load(Ordering::Relaxed),
                        stalled: c.stalled(i),
                    }
                })
                .collect(),
            decapsulated,
            decap_drops: DecapDrop::ALL
                .iter()
                .map(|r| (r.as_str(), ddrops[*r as usize]))
                .collect(),
            sessions,
            session_capacity: if self.tables {
                (self.sessions.capacity * self.cores.len()) as u64
            } else {
                0
            },
            services: self.sessions.services.clone(),
        }
    }

    /// The polling cores' CPUs, in order.
    pub fn cores(&self) -> &[Option<usize>] {
        &self.cfg.cores
    }

    /// Stops the polling cores and waits for them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Stops the polling cores and waits for them, keeping the switch for a last look
    /// at [`stats`](Self::stats), which then include every frame forwarded.
    pub fn halt(&mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Which of the `new` routers continue which of the `old` ones: a new router continues
/// the first old router that shares a VLAN with it (it is the same tenant's routing
/// domain), and is `same` when its interfaces and routes did not change.
pub fn continuity(old: &[Router], new: Vec<Router>) -> Vec<RouterChange> {
    let by_vid: HashMap<u16, usize> = old
        .iter()
        .enumerate()
        .flat_map(|(k, r)| r.interfaces().iter().map(move |i| (i.vid.get(), k)))
        .collect();
    new.into_iter()
        .map(|router| {
            let from = router
                .interfaces()
                .iter()
                .find_map(|i| by_vid.get(&i.vid.get()).copied());
            let same = from
                .and_then(|k| old.get(k))
                .is_some_and(|o| o.same_config(&router));
            RouterChange { router, from, same }
        })
        .collect()
}
