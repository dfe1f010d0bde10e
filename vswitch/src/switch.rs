//! The switch service: ports bound to polling cores, each core running the bridge.
//!
//! ```text
//!   core k:  for each (port, queue) it owns:
//!              port.poll_rx(queue) ─► bridge.forward_head(head copy) ─► staging[out port]
//!              for each out port with frames: out.tx_burst(txq(k), batch, staging)
//! ```
//!
//! Every (port, queue) pair is owned by exactly one core (round-robin over the
//! configured cores). Core `k` transmits on queue `k % queue_pairs` of each output port;
//! when two cores share a transmit queue, the queue's cell serialises them per burst.
//!
//! Each core owns its own [`Bridge`] replica: its FDB learns from the frames that core
//! receives. With one core (the default) that is the whole switch; with several, a core
//! floods a destination until it has learned it itself (correct, but extra copies). A
//! shared FDB is future work and is named in the crate README.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pmd::port::{Port, PortStats, RxBatch, TxSel};
use pmd::sched::{spawn_poll_thread, Backoff, CoreLoad, PollTask};

use crate::bridge::{
    stage_into, Bridge, BridgeConfig, DropReason, IngressFilter, PortId, PortSecurity, ToRouter,
    Vid, VlanMode,
};
use crate::router::{RouteDrop, Router, Verdict, GEN_MAX};
use pmd::port::LocalFrames;

/// `router_of` entry of a VLAN without a router interface.
const NO_ROUTER: u8 = u8::MAX;

/// The most ports one switch serves.
pub const MAX_SWITCH_PORTS: usize = 256;

/// One port of the switch.
pub struct SwitchPort {
    /// The driver.
    pub port: Arc<dyn Port>,
    /// Its VLAN membership.
    pub vlan: VlanMode,
    /// Port security: the only source MAC and addresses it may send from.
    pub security: Option<PortSecurity>,
    /// Security group: what it may be sent.
    pub filter: Option<IngressFilter>,
}

/// Configuration of the switch service.
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
        }
    }
}

/// Errors starting the switch.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// No polling core configured.
    #[error("no polling core configured")]
    NoCores,
    /// Too many ports.
    #[error("{0} ports; the switch takes at most {max}", max = MAX_SWITCH_PORTS)]
    TooManyPorts(usize),
    /// The bridge refused its configuration.
    #[error("bridge: {0}")]
    Bridge(String),
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
    /// Packets the router forwarded.
    pub routed: u64,
    /// Frames the router generated (ARP, ICMP).
    pub router_generated: u64,
    /// Router drops: (reason name, count).
    pub route_drops: Vec<(&'static str, u64)>,
    /// Per polling core, in configuration order.
    pub cores: Vec<CoreStats>,
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
}

/// Counters a core publishes for the control plane (relaxed stores, one writer).
#[derive(Default)]
struct CoreCounters {
    drops: [AtomicU64; DropReason::COUNT],
    floods: AtomicU64,
    routed: AtomicU64,
    generated: AtomicU64,
    route_drops: [AtomicU64; 5],
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

struct CoreTask {
    rxqs: Vec<(usize, u16)>,
    ports: Arc<[Arc<dyn Port>]>,
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
}

impl CoreTask {
    /// Every 64 polls: follow port link changes (one relaxed load per port).
    fn follow_links(&mut self) {
        for (i, p) in self.ports.iter().enumerate() {
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
        self.publish();
    }

    fn publish(&self) {
        let c = self.bridge.counters();
        for r in DropReason::ALL {
            self.counters.drops[r.index()].store(c.drops.get(r), Ordering::Relaxed);
        }
        self.counters.floods.store(c.floods, Ordering::Relaxed);
        let (mut fwd, mut gen, mut drops) = (0, 0, [0u64; 5]);
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
}

impl Drop for CoreTask {
    /// The core stops: publish its last counters.
    fn drop(&mut self) {
        self.publish();
    }
}

impl PollTask for CoreTask {
    fn poll(&mut self) -> usize {
        self.polls = self.polls.wrapping_add(1);
        // Links are followed every 64 polls, and at once when a port this core still sees
        // as down has come up: a guest's first frames (ARP, DHCP) follow its DRIVER_OK by
        // microseconds and must not be dropped as `port_down`. Ports already up cost one
        // branch each here.
        let came_up = self
            .link
            .iter()
            .zip(self.ports.iter())
            .any(|(&known, p)| !known && p.is_up());
        if came_up || self.polls.is_multiple_of(64) {
            self.follow_links();
            if self.polls.is_multiple_of(4096) {
                self.housekeeping();
            }
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
            ..
        } = self;
        let mut total = 0;
        for &(pi, q) in rxqs.iter() {
            let inp = PortId(pi as u16);
            let txq = *txq;
            total += ports[pi].poll_rx(q, batch, &mut |b: &mut RxBatch| {
                let now = start.elapsed().as_nanos() as u64;
                // Stage L2 over the whole burst; then L3 over the frames it handed on.
                to_router.clear();
                bridge.forward_burst(inp, b, now, staging, to_router);
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
                        if let Some(rest) = b.frame(i).get(h..n) {
                            work[h..n].copy_from_slice(rest);
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
                        ports[o].tx_burst(txq, b, sel);
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
                        ports[o].tx_burst(txq, gb, sel);
                        sel.clear();
                    }
                }
                generated.frames.clear();
            });
        }
        total
    }
}

/// A running switch; stops its cores when dropped.
pub struct Switch {
    ports: Arc<[Arc<dyn Port>]>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    loads: Vec<Arc<CoreLoad>>,
    counters: Vec<Arc<CoreCounters>>,
}

impl Switch {
    /// Binds the ports to the cores and starts polling.
    pub fn start(cfg: &SwitchConfig, ports: Vec<SwitchPort>) -> Result<Switch, SwitchError> {
        if !cfg.routers.is_empty() && cfg.cores.len() > 1 {
            // Each core would run its own router replica with its own neighbour table,
            // and a neighbour's answer lands on the core that polls its port.
            return Err(SwitchError::Bridge(
                "the router runs on one polling core for now; give one --core".into(),
            ));
        }
        if cfg.cores.is_empty() {
            return Err(SwitchError::NoCores);
        }
        if ports.len() > MAX_SWITCH_PORTS {
            return Err(SwitchError::TooManyPorts(ports.len()));
        }
        let mut router_of = Box::new([NO_ROUTER; 4096]);
        if cfg.routers.len() >= usize::from(NO_ROUTER) {
            return Err(SwitchError::Bridge(format!(
                "{} routers; the switch takes at most {}",
                cfg.routers.len(),
                NO_ROUTER - 1
            )));
        }
        for (k, r) in cfg.routers.iter().enumerate() {
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
        let ncores = cfg.cores.len();
        let mut rxqs: Vec<Vec<(usize, u16)>> = vec![Vec::new(); ncores];
        let mut k = 0;
        for (pi, p) in ports.iter().enumerate() {
            for q in 0..p.port.queue_pairs() {
                rxqs[k % ncores].push((pi, q));
                k += 1;
            }
        }
        let bcfg = BridgeConfig {
            max_ports: MAX_SWITCH_PORTS as u16,
            fdb_capacity: cfg.fdb_capacity,
            fdb_max_age: cfg.fdb_max_age.as_nanos() as u64,
        };
        let vlans: Vec<(VlanMode, Option<PortSecurity>, Option<IngressFilter>)> = ports
            .iter()
            .map(|p| (p.vlan.clone(), p.security.clone(), p.filter.clone()))
            .collect();
        let drivers: Arc<[Arc<dyn Port>]> = ports.into_iter().map(|p| p.port).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let mut sw = Switch {
            ports: drivers.clone(),
            stop: stop.clone(),
            threads: Vec::new(),
            loads: Vec::new(),
            counters: Vec::new(),
        };
        for (ci, core) in cfg.cores.iter().enumerate() {
            let mut bridge = Bridge::new(bcfg).map_err(|e| SwitchError::Bridge(e.to_string()))?;
            if !cfg.routers.is_empty() {
                let ifs = || cfg.routers.iter().flat_map(|r| r.interfaces().iter());
                bridge.set_router_macs(ifs().map(|i| (i.vid, i.mac)).collect());
                bridge.set_router_groups(
                    ifs()
                        .filter_map(|i| i.solicited_node_mac().map(|m| (i.vid, m)))
                        .collect(),
                );
            }
            for (pi, (v, sec, filter)) in vlans.iter().enumerate() {
                let id = PortId(pi as u16);
                let r = bridge
                    .add_port(id, v.clone())
                    .and_then(|()| bridge.set_port_security(id, sec.clone()))
                    .and_then(|()| bridge.set_ingress_filter(id, filter.clone()))
                    .and_then(|()| bridge.set_link(id, false));
                r.map_err(|e| SwitchError::Bridge(e.to_string()))?;
            }
            let counters = Arc::new(CoreCounters::default());
            let load = Arc::new(CoreLoad::default());
            let task = CoreTask {
                rxqs: std::mem::take(&mut rxqs[ci]),
                ports: drivers.clone(),
                txq: ci as u16,
                bridge,
                batch: RxBatch::default(),
                routers: cfg.routers.clone(),
                router_of: router_of.clone(),
                generated: Generated::new(),
                to_router: Vec::with_capacity(pmd::port::BURST),
                staging: (0..drivers.len())
                    .map(|_| Vec::with_capacity(pmd::port::BURST))
                    .collect(),
                start: Instant::now(),
                polls: 4095,
                link: vec![false; drivers.len()],
                counters: counters.clone(),
            };
            let name = format!("pmd{ci}");
            let h = spawn_poll_thread(
                name,
                *core,
                cfg.backoff,
                Box::new(task),
                stop.clone(),
                load.clone(),
            )?;
            sw.threads.push(h);
            sw.loads.push(load);
            sw.counters.push(counters);
        }
        Ok(sw)
    }

    /// The ports, in the order given.
    pub fn ports(&self) -> &[Arc<dyn Port>] {
        &self.ports
    }

    /// Counters of ports, bridge and cores.
    pub fn stats(&self) -> SwitchStats {
        let mut drops = [0u64; DropReason::COUNT];
        let (mut floods, mut routed, mut generated) = (0, 0, 0);
        let mut rdrops = [0u64; 5];
        for c in &self.counters {
            for (d, a) in drops.iter_mut().zip(c.drops.iter()) {
                *d += a.load(Ordering::Relaxed);
            }
            floods += c.floods.load(Ordering::Relaxed);
            routed += c.routed.load(Ordering::Relaxed);
            generated += c.generated.load(Ordering::Relaxed);
            for (d, a) in rdrops.iter_mut().zip(c.route_drops.iter()) {
                *d += a.load(Ordering::Relaxed);
            }
        }
        SwitchStats {
            ports: self
                .ports
                .iter()
                .map(|p| (p.name().to_string(), p.stats()))
                .collect(),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.as_str(), drops[r.index()]))
                .collect(),
            floods,
            routed,
            router_generated: generated,
            route_drops: RouteDrop::ALL
                .iter()
                .map(|r| (r.as_str(), rdrops[r.index()]))
                .collect(),
            cores: self
                .loads
                .iter()
                .map(|l| CoreStats {
                    busy_polls: l.busy_polls.load(Ordering::Relaxed),
                    idle_polls: l.idle_polls.load(Ordering::Relaxed),
                    packets: l.packets.load(Ordering::Relaxed),
                    cycles_per_packet: l.cycles_per_packet(),
                })
                .collect(),
        }
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
