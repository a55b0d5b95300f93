//! Auth and firewall events (`auth` topic), keyed by source address — except
//! DDoS records, keyed by the destination under attack.
//!
//! Internal hosts talk to their usual servers: mostly connections and SSH
//! logins, with the odd mistyped password or blocked port. Injected: SSH
//! brute force (30–200 failed logins from one source within minutes), DDoS
//! (200–500 connections to one destination from many sources within ~10 s)
//! and firewall-deny storms (50–300 denies for one source within a minute).

use super::sim::{population, IncidentSpec, JsonObject, Rng, Timeline, Weighted};
use super::{Anomaly, Draft, Source};

/// About 2% of events are injected anomalies. Incidents are large, so in
/// short streams their sizes shrink towards the low end of their ranges to
/// stay near that share.
pub(crate) const INCIDENTS: &[IncidentSpec] = &[
    IncidentSpec {
        anomaly: Anomaly::SshBruteforce,
        share: 0.006,
        mean_labels: 115.0,
        earliest: 0.02,
        latest: 0.95,
    },
    IncidentSpec {
        anomaly: Anomaly::Ddos,
        share: 0.008,
        mean_labels: 350.0,
        earliest: 0.02,
        latest: 0.95,
    },
    IncidentSpec {
        anomaly: Anomaly::FwDenyStorm,
        share: 0.006,
        mean_labels: 175.0,
        earliest: 0.02,
        latest: 0.95,
    },
];

/// Mean time between two events of an average internal host.
const HOST_MEAN_GAP_S: f64 = 120.0;
const SERVERS: usize = 24;
/// The first servers are SSH bastions; the rest serve these ports.
const BASTIONS: usize = 4;
const SERVICE_PORTS: [u16; 7] = [443, 443, 443, 80, 5432, 3306, 6379];
/// Ports a misconfigured client or a scanner hits and the firewall blocks.
const BLOCKED_PORTS: [u16; 8] = [23, 135, 139, 445, 1433, 3389, 5900, 8080];
/// First octets of the outside addresses attacks come from.
const OUTSIDE_FIRST_OCTETS: [u8; 10] = [23, 45, 77, 91, 103, 141, 185, 193, 202, 212];

#[derive(Clone, Copy)]
enum Kind {
    Conn,
    SshOk,
    SshFail,
    FwDeny,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Conn => "conn",
            Kind::SshOk => "ssh_ok",
            Kind::SshFail => "ssh_fail",
            Kind::FwDeny => "fw_deny",
        }
    }
}

struct Event {
    src: [u8; 4],
    dst: [u8; 4],
    port: u16,
    kind: Kind,
    bytes: u64,
    anomaly: Option<Anomaly>,
}

struct Host {
    ip: [u8; 4],
    usual_servers: [usize; 3],
}

pub(crate) struct Security {
    hosts: Vec<Host>,
    activity: Weighted,
    server_ports: Vec<u16>,
    timeline: Timeline<Event>,
    next_normal_ts: f64,
    mean_gap_s: f64,
    now: f64,
    /// Largest incident size per anomaly that keeps near its share of `count`.
    count: usize,
}

fn server_ip(server: usize) -> [u8; 4] {
    [10, 9, 0, 5 + server as u8]
}

fn outside_ip(rng: &mut Rng) -> [u8; 4] {
    [
        OUTSIDE_FIRST_OCTETS[rng.below(OUTSIDE_FIRST_OCTETS.len())],
        rng.below(256) as u8,
        rng.below(256) as u8,
        1 + rng.below(254) as u8,
    ]
}

fn ip_string([a, b, c, d]: [u8; 4]) -> String {
    format!("{a}.{b}.{c}.{d}")
}

impl Security {
    pub(crate) fn new(rng: &mut Rng, count: usize, start_ts: f64) -> Self {
        let n_hosts = population(count, 100, 50, 1000);
        let hosts: Vec<Host> = (0..n_hosts)
            .map(|i| Host {
                ip: [
                    10,
                    1 + (i / 250) as u8,
                    rng.below(4) as u8,
                    2 + (i % 250) as u8,
                ],
                usual_servers: std::array::from_fn(|_| rng.below(SERVERS)),
            })
            .collect();
        let server_ports = (0..SERVERS)
            .map(|s| {
                if s < BASTIONS {
                    22
                } else {
                    SERVICE_PORTS[rng.below(SERVICE_PORTS.len())]
                }
            })
            .collect();
        let activity = Weighted::new((0..n_hosts).map(|_| (0.8 * rng.normal()).exp()));
        let mean_gap_s = HOST_MEAN_GAP_S / n_hosts as f64;
        Self {
            hosts,
            activity,
            server_ports,
            timeline: Timeline::new(),
            next_normal_ts: start_ts + rng.exp(mean_gap_s),
            mean_gap_s,
            now: start_ts,
            count,
        }
    }

    /// Incident size drawn from `lo..=hi`, capped near the anomaly's share
    /// of the stream (but never below `lo`).
    fn incident_size(&self, rng: &mut Rng, anomaly: Anomaly, lo: usize, hi: usize) -> usize {
        let share = INCIDENTS
            .iter()
            .find(|spec| spec.anomaly == anomaly)
            .map_or(0.0, |spec| spec.share);
        let cap = ((self.count as f64 * share) as usize).clamp(lo, hi);
        rng.between(lo, cap)
    }

    /// An attacking source: outside, or an internal host that was compromised.
    fn attacker(&self, rng: &mut Rng, outside_share: f64) -> [u8; 4] {
        if rng.chance(outside_share) {
            outside_ip(rng)
        } else {
            self.hosts[self.activity.pick(rng)].ip
        }
    }

    fn normal_event(&self, rng: &mut Rng) -> Event {
        let host = &self.hosts[self.activity.pick(rng)];
        let server = if rng.chance(0.9) {
            host.usual_servers[rng.below(host.usual_servers.len())]
        } else {
            rng.below(SERVERS)
        };
        let port = self.server_ports[server];
        let (kind, port, bytes) = if port == 22 {
            if rng.chance(0.03) {
                (Kind::SshFail, 22, rng.between(150, 600) as u64)
            } else {
                (Kind::SshOk, 22, lognormal_bytes(rng, 20_000.0))
            }
        } else if rng.chance(0.015) {
            let blocked = BLOCKED_PORTS[rng.below(BLOCKED_PORTS.len())];
            (Kind::FwDeny, blocked, 0)
        } else {
            (Kind::Conn, port, lognormal_bytes(rng, 4_000.0))
        };
        Event {
            src: host.ip,
            dst: server_ip(server),
            port,
            kind,
            bytes,
            anomaly: None,
        }
    }
}

fn lognormal_bytes(rng: &mut Rng, median: f64) -> u64 {
    (median * (1.2 * rng.normal()).exp()).round().max(40.0) as u64
}

impl Source for Security {
    fn inject(&mut self, anomaly: Anomaly, rng: &mut Rng) {
        let start = self.now + rng.uniform(0.0, 5.0);
        match anomaly {
            Anomaly::SshBruteforce => {
                let n = self.incident_size(rng, anomaly, 30, 200);
                let src = self.attacker(rng, 0.6);
                let dst = server_ip(rng.below(BASTIONS));
                let window = rng.uniform(60.0, 300.0);
                for offset in rng.sorted_offsets(n, window) {
                    let bytes = rng.between(150, 600) as u64;
                    self.timeline.push(
                        start + offset,
                        Event {
                            src,
                            dst,
                            port: 22,
                            kind: Kind::SshFail,
                            bytes,
                            anomaly: Some(anomaly),
                        },
                    );
                }
            }
            Anomaly::Ddos => {
                let n = self.incident_size(rng, anomaly, 200, 500);
                let server = BASTIONS + rng.below(SERVERS - BASTIONS);
                let (dst, port) = (server_ip(server), self.server_ports[server]);
                let window = rng.uniform(5.0, 12.0);
                for offset in rng.sorted_offsets(n, window) {
                    let event = Event {
                        src: outside_ip(rng),
                        dst,
                        port,
                        kind: Kind::Conn,
                        bytes: rng.between(40, 120) as u64,
                        anomaly: Some(anomaly),
                    };
                    self.timeline.push(start + offset, event);
                }
            }
            Anomaly::FwDenyStorm => {
                let n = self.incident_size(rng, anomaly, 50, 300);
                let src = self.attacker(rng, 0.7);
                let window = rng.uniform(20.0, 60.0);
                for offset in rng.sorted_offsets(n, window) {
                    // A scan: many addresses, many ports, all blocked.
                    let event = Event {
                        src,
                        dst: [10, 9, rng.below(4) as u8, 1 + rng.below(254) as u8],
                        port: 1 + rng.below(1024) as u16,
                        kind: Kind::FwDeny,
                        bytes: 0,
                        anomaly: Some(anomaly),
                    };
                    self.timeline.push(start + offset, event);
                }
            }
            other => unreachable!("security does not inject {other:?}"),
        }
    }

    fn next(&mut self, rng: &mut Rng, id: &str) -> Draft {
        let (ts, event) = if self
            .timeline
            .peek_ts()
            .is_some_and(|ts| ts <= self.next_normal_ts)
        {
            self.timeline.pop().expect("peeked")
        } else {
            let ts = self.next_normal_ts;
            self.next_normal_ts += rng.exp(self.mean_gap_s);
            (ts, self.normal_event(rng))
        };
        self.now = ts;
        let value = JsonObject::new(id, ts)
            .ip("src_ip", event.src)
            .ip("dst_ip", event.dst)
            .int("dst_port", u64::from(event.port))
            .str("event", event.kind.name())
            .int("failed", u64::from(matches!(event.kind, Kind::SshFail)))
            .int("denied", u64::from(matches!(event.kind, Kind::FwDeny)))
            .int("bytes", event.bytes)
            .finish();
        let key = if event.anomaly == Some(Anomaly::Ddos) {
            ip_string(event.dst)
        } else {
            ip_string(event.src)
        };
        Draft {
            key,
            value,
            anomaly: event.anomaly,
            pinned: false,
        }
    }
}
