//! The session stage of a polling core: connection tracking for stateful groups and
//! services around the bridge and the routers.
//!
//! ```text
//!   burst ─► lookup (each IP frame's session, by zone and 5-tuple)
//!         ─► bridge (port security on the frame as sent; stateful checks skip frames
//!            of a live session; a stateful rule asks for a session)
//!         ─► translate (rewrite the heads of translated sessions' frames)
//!         ─► routers (a new connection to a VIP: Maglev picks a backend, a session
//!            with DNAT is made and the head rewritten before routing; no backend: a
//!            TCP reset or an ICMP port unreachable back)
//!         ─► commit (the sessions stateful rules asked for; a service's session stays
//!            only if its first packet was sent)
//! ```
//!
//! Nothing here runs while no service exists and no port has a stateful group.
#![forbid(unsafe_code)]

use std::sync::Arc;

use pmd::port::{RxBatch, BURST};

use crate::bridge::{Bridge, PortId, Track, Vid};
use crate::conntrack::{
    as_v4, flow_of, rewrite4, tcp, v4, Dir, Flow, Session, SessionStats, Sessions, Timeouts, Tuple,
    AFFINITY_ZONE,
};
use crate::lb::{Service, Services};
use crate::router::{write_icmp, Router};
use crate::wire::EthernetAddress;

/// Most new sessions one core tells the others per poll.
pub const NOTES: usize = 256;

/// What the stage knows of one frame of the burst.
#[derive(Clone, Copy, Debug, Default)]
struct Frame {
    flow: Option<Flow>,
    zone: u16,
    /// The flow's key hash.
    hash: u32,
    hit: Option<(u32, Dir)>,
    /// A service's session made for this frame during the burst.
    created: bool,
    /// A closed session its SYN opens afresh: replaced once the frame was checked.
    reopen: Option<u32>,
}

/// The stage's configuration, as the control thread posts it.
#[derive(Clone)]
pub struct StageConf {
    /// Services.
    pub services: Services,
    /// Zone of each VLAN.
    pub zone_of: Arc<[u16; 4096]>,
    /// Whether anything needs sessions (services, or a port with stateful groups).
    pub active: bool,
    /// Session timeouts.
    pub timeouts: Timeouts,
}

/// What the stage decided for a frame the routers are about to see.
pub enum Routing {
    /// Route it (its head may have been translated).
    Route,
    /// Send the `len` bytes written to the buffer back on the frame's VLAN instead.
    Reply(usize),
    /// Drop it.
    Drop,
}

/// One core's session stage.
pub struct Stage {
    /// The core's session table.
    pub sessions: Sessions,
    conf: StageConf,
    frames: [Frame; BURST],
    /// Each frame's session state, for the bridge.
    pub tracks: [Track; BURST],
    /// Sessions made on this core for the other cores' tables.
    pub notes: Vec<Session>,
    /// Whether other cores listen.
    pub share: bool,
}

impl Stage {
    /// A stage with a table of `capacity` sessions.
    pub fn new(capacity: usize, conf: StageConf) -> Stage {
        Stage {
            sessions: Sessions::new(capacity, conf.timeouts),
            conf,
            frames: [Frame::default(); BURST],
            tracks: [Track::default(); BURST],
            notes: Vec::with_capacity(NOTES),
            share: false,
        }
    }

    /// Whether the stage runs at all.
    #[inline(always)]
    pub fn active(&self) -> bool {
        self.conf.active
    }

    /// Its counters.
    pub fn stats(&self) -> SessionStats {
        self.sessions.stats()
    }

    /// Takes a new configuration: sessions of backends that left their service (or of
    /// services that are gone) are removed at once.
    pub fn set_conf(&mut self, conf: StageConf, table: Option<Sessions>) {
        if let Some(t) = table {
            self.sessions = t;
        }
        self.sessions.set_timeouts(conf.timeouts);
        let services = &conf.services;
        // Another change (ports, routers) posts the same services: the table is not
        // scanned for them.
        let same = services.list().len() == self.conf.services.list().len()
            && services
                .list()
                .iter()
                .zip(self.conf.services.list())
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if same {
            self.conf = conf;
            return;
        }
        self.sessions.remove_where(|s| {
            if !s.service {
                return false;
            }
            let zone = s.zone & !AFFINITY_ZONE;
            let (Some(vip), Some(b)) = (as_v4(s.orig.dst), as_v4(s.reply.src)) else {
                return true;
            };
            !services
                .find(zone, vip, s.orig.dport, s.orig.proto)
                .is_some_and(|svc| svc.has((b, s.reply.sport)))
        });
        self.conf = conf;
    }

    /// Looks up the sessions of frames `range` of `b`, which came from `port`.
    pub fn lookup(
        &mut self,
        bridge: &Bridge,
        port: PortId,
        b: &RxBatch,
        range: std::ops::Range<usize>,
        now: u64,
    ) {
        // First each frame's flow, with the table memory its lookup will read pulled in
        // (independent loads, so their misses overlap) once the table outgrows the
        // caches; then the lookups.
        let mut warm = 0u64;
        let big = self.sessions.live() > 4096;
        let access = bridge.access_vid(port);
        for i in range.clone() {
            let head = b.head(i);
            let mut f = Frame::default();
            let tagged = head.get(12..14) == Some(&[0x81, 0x00]);
            let l3 = if tagged { 18 } else { 14 };
            let vid = match access {
                Some(v) if !tagged => Some(v),
                _ => bridge.vid_of(port, head),
            };
            if let (Some(flow), Some(vid)) = (flow_of(head, l3), vid) {
                f.zone = self.conf.zone_of[usize::from(vid.get())];
                f.flow = Some(flow);
                if big {
                    let (h, w) = self.sessions.warm(f.zone, &flow.tuple);
                    f.hash = h;
                    warm ^= w;
                } else {
                    f.hash = self.sessions.hash(f.zone, &flow.tuple);
                }
            }
            self.frames[i] = f;
        }
        std::hint::black_box(warm);
        for i in range {
            let f = &mut self.frames[i];
            if let Some(flow) = f.flow {
                let hit = self
                    .sessions
                    .lookup_hashed(f.zone, &flow.tuple, f.hash, now);
                // Nothing changes here: the frame has not been checked yet (port
                // security), and a spoofed one must not move anyone's session.
                if let Some((slot, dir)) = hit {
                    if self.sessions.reopens(slot, dir, flow.flags) {
                        f.reopen = Some(slot);
                    } else {
                        f.hit = Some((slot, dir));
                    }
                }
            }
            self.tracks[i] = Track {
                est: f.hit.is_some(),
                ..Track::default()
            };
        }
    }

    /// Forgets frames `range` (before a burst whose frames are not all looked up: the
    /// uplink's, where only decapsulated runs are).
    pub fn clear(&mut self, range: std::ops::Range<usize>) {
        for i in range {
            self.frames[i] = Frame::default();
            self.tracks[i] = Track::default();
        }
    }

    /// After the bridge: the sessions of the frames it took learn of them (state,
    /// time), and the heads of translated sessions' frames are rewritten.
    pub fn translate(&mut self, b: &mut RxBatch, range: std::ops::Range<usize>, now: u64) {
        for i in range {
            let f = self.frames[i];
            let (Some(flow), Some((slot, dir))) = (f.flow, f.hit) else {
                continue;
            };
            if !self.tracks[i].passed {
                continue;
            }
            let before = self.sessions.state(slot);
            self.sessions.touch(slot, dir, flow.flags, now);
            // The other cores' copies learn what this one has seen (a reply, a FIN):
            // each sees only the directions its ports send.
            if self.share && self.sessions.state(slot) != before && self.notes.len() < NOTES {
                if let Some(s) = self.sessions.get(slot) {
                    self.notes.push(*s);
                }
            }
            let Some(s) = self.sessions.get(slot) else {
                continue;
            };
            if s.translates() {
                let to = s.rewrite_to(dir);
                // Only a frame shorter than its own headers fails: it goes as it is.
                let _ = rewrite4(b.head_mut(i), &flow, &to);
            }
        }
    }

    /// Frame `i`, on its way to `router` on VLAN `vid`: a new connection to one of the
    /// zone's services gets its backend and session here, and its head translated.
    /// `out` takes a reset or ICMP error when the service has no backend.
    pub fn to_router(
        &mut self,
        i: usize,
        vid: Vid,
        b: &mut RxBatch,
        router: &Router,
        now: u64,
        out: &mut [u8],
    ) -> Routing {
        let f = self.frames[i];
        let Some(flow) = f.flow else {
            return Routing::Route;
        };
        if f.hit.is_some() || self.conf.services.is_empty() || flow.l4 == 0 {
            return Routing::Route;
        }
        // A SYN after the conversation closed: the closed session goes, a new one
        // (and a new choice of backend) comes.
        if let Some(old) = f.reopen {
            self.forget(old, &flow.tuple, f.zone);
        }
        let t = flow.tuple;
        let (Some(vip), Some(client)) = (as_v4(t.dst), as_v4(t.src)) else {
            return Routing::Route;
        };
        let Some(svc) = self
            .conf
            .services
            .find(f.zone, vip, t.dport, t.proto)
            .cloned()
        else {
            return Routing::Route;
        };
        // A later frame of a connection whose session an earlier frame of this burst
        // made.
        if let Some((slot, dir)) = self.sessions.lookup(f.zone, &t, now) {
            self.frames[i].hit = Some((slot, dir));
            if let Some(s) = self.sessions.get(slot) {
                let to = s.rewrite_to(dir);
                let _ = rewrite4(b.head_mut(i), &flow, &to);
            }
            return Routing::Route;
        }
        if t.proto == 6 && flow.flags & tcp::RST != 0 {
            return Routing::Drop;
        }
        let Some(backend) = self.choose(&svc, f.zone, &t, client, now) else {
            svc.no_backend
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return match reject(out, b.head(i), &flow) {
                Some(len) => Routing::Reply(len),
                None => Routing::Drop,
            };
        };
        // Hairpin: a backend reaching its own service sees the connection come from
        // its gateway, so that its replies come back through the switch.
        let snat = if backend.0 == client {
            match router.interface_on(vid) {
                Some(i) => u32::from(i.ip),
                None => return Routing::Drop,
            }
        } else {
            client
        };
        let reply = Tuple {
            proto: t.proto,
            src: v4(backend.0),
            dst: v4(snat),
            sport: backend.1,
            dport: t.sport,
        };
        let mut s = Session::new(f.zone, t, reply, now);
        s.service = true;
        let Some(slot) = self.sessions.insert(s, now) else {
            // Full (counted), or the translated tuple is another session's: dropped.
            return Routing::Drop;
        };
        svc.hit(backend);
        let _ = rewrite4(b.head_mut(i), &flow, &s.rewrite_to(Dir::Orig));
        self.frames[i].hit = Some((slot, Dir::Orig));
        self.frames[i].created = true;
        Routing::Route
    }

    /// The backend of a new connection: the client's affinity if it has one to a
    /// backend still there, else Maglev's choice (remembered when the service keeps
    /// affinity).
    fn choose(
        &mut self,
        svc: &Service,
        zone: u16,
        t: &Tuple,
        client: u32,
        now: u64,
    ) -> Option<(u32, u16)> {
        if svc.affinity_s == 0 {
            return svc.pick(t);
        }
        let key = Tuple {
            proto: t.proto,
            src: t.src,
            dst: t.dst,
            sport: 0,
            dport: t.dport,
        };
        let az = zone | AFFINITY_ZONE;
        if let Some((slot, _)) = self.sessions.lookup(az, &key, now) {
            let kept = self
                .sessions
                .get(slot)
                .and_then(|s| Some((as_v4(s.reply.src)?, s.reply.sport)))
                .filter(|b| svc.has(*b));
            if let Some(b) = kept {
                self.sessions.touch(slot, Dir::Orig, 0, now);
                return Some(b);
            }
            self.sessions.remove(slot);
        }
        let b = svc.pick(t)?;
        let mut s = Session::new(
            az,
            key,
            Tuple {
                proto: t.proto,
                src: v4(b.0),
                dst: v4(client),
                sport: b.1,
                dport: 0,
            },
            now,
        );
        s.service = true;
        s.ttl_s = svc.affinity_s;
        // Without room the choice is not remembered; the connection goes on.
        let _ = self.sessions.insert(s, now);
        Some(b)
    }

    /// Ends the burst's frames `range`: makes the sessions stateful rules asked for,
    /// and keeps a service's new session only if its first packet was sent.
    pub fn commit(&mut self, range: std::ops::Range<usize>, now: u64) {
        for i in range {
            let f = self.frames[i];
            let t = self.tracks[i];
            let Some(flow) = f.flow else { continue };
            match f.hit {
                Some((slot, _)) if f.created => {
                    if !t.sent {
                        self.sessions.remove(slot);
                    } else if self.share && self.notes.len() < NOTES {
                        if let Some(s) = self.sessions.get(slot) {
                            self.notes.push(*s);
                        }
                    }
                }
                None if t.commit && t.sent => {
                    if flow.tuple.proto == 6 && flow.flags & tcp::RST != 0 {
                        continue;
                    }
                    if let Some(old) = f.reopen {
                        self.forget(old, &flow.tuple, f.zone);
                    }
                    let s = Session::new(f.zone, flow.tuple, flow.tuple.reversed(), now);
                    if self.sessions.insert(s, now).is_some()
                        && self.share
                        && self.notes.len() < NOTES
                    {
                        self.notes.push(s);
                    }
                }
                _ => {}
            }
        }
    }

    /// Removes session `slot` if it is still the one of `t` in `zone`.
    fn forget(&mut self, slot: u32, t: &Tuple, zone: u16) {
        let same = self
            .sessions
            .get(slot)
            .is_some_and(|s| s.zone == zone && (s.orig == *t || s.reply == *t));
        if same {
            self.sessions.remove(slot);
        }
    }

    /// A session another core made or saw change: into this core's table.
    pub fn adopt(&mut self, s: Session, now: u64) -> bool {
        self.sessions.adopt(s, now)
    }
}

/// A TCP reset (TCP) or an ICMP port unreachable (others) answering `head` from its
/// destination, into `out`; its length, or `None` when the head is too short.
pub fn reject(out: &mut [u8], head: &[u8], flow: &Flow) -> Option<usize> {
    let l3 = usize::from(flow.l3);
    let smac = EthernetAddress(head.get(0..6)?.try_into().ok()?);
    let dmac = EthernetAddress(head.get(6..12)?.try_into().ok()?);
    let src = std::net::Ipv4Addr::from(as_v4(flow.tuple.dst)?);
    let dst = std::net::Ipv4Addr::from(as_v4(flow.tuple.src)?);
    if flow.tuple.proto != 6 {
        let quote = head.get(l3..l3 + 28)?;
        return write_icmp(out, smac, dmac, src, dst, [3, 3, 0, 0, 0, 0, 0, 0], quote);
    }
    let l4 = usize::from(flow.l4);
    let tcp = head.get(l4..l4 + 20)?;
    let total = usize::from(u16::from_be_bytes([head[l3 + 2], head[l3 + 3]]));
    let ihl = usize::from(head[l3] & 0xf) * 4;
    let data = total
        .saturating_sub(ihl)
        .saturating_sub(usize::from(tcp[12] >> 4) * 4);
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let flags = tcp[13];
    // RFC 9293 3.10.7.1: to a segment with ACK, RST with its ack number as sequence;
    // otherwise sequence 0 and an ACK of everything it occupied.
    let (rseq, rack, rflags) = if flags & tcp::ACK != 0 {
        (ack, 0, tcp::RST)
    } else {
        let len = data as u32 + u32::from(flags & tcp::SYN != 0) + u32::from(flags & tcp::FIN != 0);
        (0, seq.wrapping_add(len), tcp::RST | tcp::ACK)
    };
    let len = 14 + 20 + 20;
    if out.len() < len.max(60) {
        return None;
    }
    out[..len.max(60)].fill(0);
    out[0..6].copy_from_slice(dmac.as_bytes());
    out[6..12].copy_from_slice(smac.as_bytes());
    out[12..14].copy_from_slice(&[0x08, 0x00]);
    {
        let ip = &mut out[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        let c = crate::wire::checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
    {
        let t = &mut out[34..54];
        t[0..2].copy_from_slice(&flow.tuple.dport.to_be_bytes());
        t[2..4].copy_from_slice(&flow.tuple.sport.to_be_bytes());
        t[4..8].copy_from_slice(&rseq.to_be_bytes());
        t[8..12].copy_from_slice(&rack.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = rflags;
    }
    let mut ph = [0u8; 32];
    ph[0..4].copy_from_slice(&src.octets());
    ph[4..8].copy_from_slice(&dst.octets());
    ph[9] = 6;
    ph[10..12].copy_from_slice(&20u16.to_be_bytes());
    ph[12..32].copy_from_slice(&out[34..54]);
    let c = crate::wire::checksum(&ph);
    out[50..52].copy_from_slice(&c.to_be_bytes());
    Some(len.max(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_answers_a_syn_and_checks_out() {
        let mut f = vec![0u8; 14 + 40];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&40u16.to_be_bytes());
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 96, 0, 1]);
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        f[38..42].copy_from_slice(&1000u32.to_be_bytes());
        f[46] = 0x50;
        f[47] = tcp::SYN;
        let flow = flow_of(&f, 14).unwrap();
        let mut out = [0u8; 256];
        let n = reject(&mut out, &f, &flow).unwrap();
        let p = etherparse::SlicedPacket::from_ethernet(&out[..n]).unwrap();
        let Some(etherparse::TransportSlice::Tcp(t)) = p.transport else {
            panic!("not TCP")
        };
        assert!(t.rst() && t.ack());
        assert_eq!((t.source_port(), t.destination_port()), (80, 40000));
        assert_eq!(t.acknowledgment_number(), 1001);
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source(), [10, 96, 0, 1]);
        let sum = t
            .to_header()
            .calc_checksum_ipv4_raw([10, 96, 0, 1], [10, 0, 0, 1], &[])
            .unwrap();
        assert_eq!(sum, t.checksum());
        assert_eq!(&out[0..6], &f[6..12]);
    }
}
