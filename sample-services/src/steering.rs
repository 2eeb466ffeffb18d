//! Steering (gRPC, `proto/steering.proto`): ranks the CDN servers a client should stream a
//! title from, from a topology file (`config/topology.toml`), and takes live load and health
//! reports (the cache-control role), so rankings change as servers report.
//!
//! Ranking: only healthy servers that hold the title; then the client's ISP first, its region
//! next, its country after that; less loaded first within a tier; a server at 95 % load or
//! more goes to the end. The client's ISP and region come from the network its address is in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::RwLock;

use ipnet::IpNet;
use serde::Deserialize;
use tonic::{Request, Response, Status};

/// Generated gRPC code.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms
)]
pub mod proto {
    tonic::include_proto!("steering.v1");
}

use proto::steering_server::Steering;
use proto::{HealthReport, HealthReportAck, SelectServersRequest, SelectServersResponse, Server};

/// The most servers one answer lists.
pub const MAX_SERVERS: usize = 10;

/// A load at which a server is ranked last.
const OVERLOADED: f64 = 0.95;

/// A client network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Its addresses.
    pub cidr: IpNet,
    /// Its ISP.
    pub isp: String,
    /// Its region.
    pub region: String,
    /// Its country.
    pub country: String,
}

/// A CDN server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Unique id.
    pub id: String,
    /// Base URL.
    pub url: String,
    /// The ISP it sits in.
    pub isp: String,
    /// Its region.
    pub region: String,
    /// Its country.
    pub country: String,
    /// Starting load, 0.0 to 1.0.
    #[serde(default)]
    pub load: f64,
    /// Starting health.
    #[serde(default = "yes")]
    pub healthy: bool,
    /// Title ids it holds; `"*"` is all.
    pub titles: Vec<String>,
}

fn yes() -> bool {
    true
}

/// The topology file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Client networks, first match wins.
    #[serde(default)]
    pub networks: Vec<Network>,
    /// The servers.
    pub servers: Vec<ServerSpec>,
}

impl Topology {
    /// Loads and checks a topology file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read topology {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks a topology document.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t: Topology = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut seen = std::collections::HashSet::new();
        for s in &t.servers {
            if !seen.insert(s.id.as_str()) {
                return Err(format!("server id {} appears twice", s.id));
            }
            if !(0.0..=1.0).contains(&s.load) {
                return Err(format!(
                    "server {}: load {} is not 0.0 to 1.0",
                    s.id, s.load
                ));
            }
            if !(s.url.starts_with("https://") || s.url.starts_with("http://")) {
                return Err(format!(
                    "server {}: url {:?} is not an http(s) URL",
                    s.id, s.url
                ));
            }
        }
        if t.servers.is_empty() {
            return Err("no [[servers]]: steering needs at least one".into());
        }
        Ok(t)
    }

    /// The network `ip` is in.
    pub fn network(&self, ip: IpAddr) -> Option<&Network> {
        self.networks.iter().find(|n| n.cidr.contains(&ip))
    }
}

#[derive(Debug, Clone, Copy)]
struct Live {
    load: f64,
    healthy: bool,
}

/// The Steering service: topology plus live reports.
#[derive(Debug)]
pub struct SteeringService {
    topology: Topology,
    live: RwLock<HashMap<String, Live>>,
}

impl SteeringService {
    /// A service over `topology`, starting from its loads and health.
    pub fn new(topology: Topology) -> Self {
        let live = topology
            .servers
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    Live {
                        load: s.load,
                        healthy: s.healthy,
                    },
                )
            })
            .collect();
        Self {
            topology,
            live: RwLock::new(live),
        }
    }

    /// Ranks the servers for a client at `ip` (in `country`, from its identity) and a title.
    pub fn rank(
        &self,
        ip: IpAddr,
        country: &str,
        title: &str,
        limit: usize,
    ) -> SelectServersResponse {
        let net = self.topology.network(ip);
        let country = if country.is_empty() {
            net.map_or("", |n| n.country.as_str())
        } else {
            country
        };
        let live = self.live.read().map(|l| l.clone()).unwrap_or_default();
        let mut ranked: Vec<(i32, f64, Server)> = self
            .topology
            .servers
            .iter()
            .filter(|s| s.titles.iter().any(|t| t == "*" || t == title))
            .filter_map(|s| {
                let l = live.get(&s.id).copied().unwrap_or(Live {
                    load: s.load,
                    healthy: s.healthy,
                });
                if !l.healthy {
                    return None;
                }
                let mut score = 0;
                let mut why = Vec::new();
                if net.is_some_and(|n| n.isp == s.isp) {
                    score += 8;
                    why.push("same isp");
                }
                if net.is_some_and(|n| n.region == s.region) {
                    score += 4;
                    why.push("same region");
                }
                if s.country == country {
                    score += 2;
                    why.push("same country");
                }
                if l.load >= OVERLOADED {
                    score -= 16;
                    why.push("overloaded");
                }
                let reason = if why.is_empty() {
                    format!("elsewhere; load {:.2}", l.load)
                } else {
                    format!("{}; load {:.2}", why.join(", "), l.load)
                };
                Some((
                    score,
                    l.load,
                    Server {
                        id: s.id.clone(),
                        url: s.url.clone(),
                        isp: s.isp.clone(),
                        region: s.region.clone(),
                        country: s.country.clone(),
                        load: l.load,
                        reason,
                    },
                ))
            })
            .collect();
        ranked.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(a.1.total_cmp(&b.1))
                .then_with(|| a.2.id.cmp(&b.2.id))
        });
        ranked.truncate(limit.clamp(1, MAX_SERVERS));
        SelectServersResponse {
            servers: ranked.into_iter().map(|(_, _, s)| s).collect(),
            client_isp: net.map(|n| n.isp.clone()).unwrap_or_default(),
            client_region: net.map(|n| n.region.clone()).unwrap_or_default(),
        }
    }

    /// Records a server's report; `false` when the id is unknown.
    pub fn report(&self, id: &str, load: f64, healthy: bool) -> bool {
        let Ok(mut live) = self.live.write() else {
            return false;
        };
        match live.get_mut(id) {
            Some(l) => {
                *l = Live {
                    load: load.clamp(0.0, 1.0),
                    healthy,
                };
                true
            }
            None => false,
        }
    }
}

#[tonic::async_trait]
impl Steering for SteeringService {
    async fn select_servers(
        &self,
        request: Request<SelectServersRequest>,
    ) -> Result<Response<SelectServersResponse>, Status> {
        let r = request.into_inner();
        let ip: IpAddr = r.client_ip.trim().parse().map_err(|_| {
            Status::invalid_argument(format!("client_ip {:?} is not an IP address", r.client_ip))
        })?;
        if r.title_id.is_empty() {
            return Err(Status::invalid_argument("title_id is empty"));
        }
        let limit = if r.limit == 0 {
            MAX_SERVERS
        } else {
            r.limit as usize
        };
        let answer = self.rank(ip, &r.country, &r.title_id, limit);
        if answer.servers.is_empty() {
            return Err(Status::not_found(format!(
                "no healthy server holds title {}",
                r.title_id
            )));
        }
        Ok(Response::new(answer))
    }

    async fn report_health(
        &self,
        request: Request<HealthReport>,
    ) -> Result<Response<HealthReportAck>, Status> {
        let r = request.into_inner();
        if !(0.0..=1.0).contains(&r.load) {
            return Err(Status::invalid_argument(format!(
                "load {} is not 0.0 to 1.0",
                r.load
            )));
        }
        let known = self.report(&r.server_id, r.load, r.healthy);
        if !known {
            return Err(Status::not_found(format!("unknown server {}", r.server_id)));
        }
        Ok(Response::new(HealthReportAck { known }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> SteeringService {
        SteeringService::new(
            Topology::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/topology.toml"))
                .expect("the shipped topology loads"),
        )
    }

    fn ids(r: &SelectServersResponse) -> Vec<&str> {
        r.servers.iter().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn same_isp_first_then_region_then_load() {
        let s = service();
        let r = s.rank("127.0.0.1".parse().expect("ip"), "JP", "t-0001", 10);
        assert_eq!(r.client_isp, "loopnet");
        // Both loopnet servers hold t-0001; the less loaded one first.
        assert_eq!(ids(&r)[..2], ["tyo-loopnet-2", "tyo-loopnet-1"]);
        // Then same region and country, by load.
        assert_eq!(ids(&r)[2..4], ["tyo-ix-edge-1", "osa-ix-1"]);
        assert!(r.servers.len() <= MAX_SERVERS);
        assert!(r.servers[0].reason.contains("same isp"));
    }

    #[test]
    fn only_servers_holding_the_title() {
        let s = service();
        let r = s.rank("127.0.0.1".parse().expect("ip"), "JP", "t-0003", 10);
        assert!(!ids(&r).contains(&"tyo-loopnet-2"));
        assert_eq!(ids(&r)[0], "tyo-loopnet-1");
    }

    #[test]
    fn reports_change_the_ranking_live() {
        let s = service();
        let ip = "127.0.0.1".parse().expect("ip");
        assert!(s.report("tyo-loopnet-2", 0.99, true));
        assert_eq!(ids(&s.rank(ip, "JP", "t-0001", 10))[0], "tyo-loopnet-1");
        assert!(s.report("tyo-loopnet-1", 0.1, false));
        let r = s.rank(ip, "JP", "t-0001", 10);
        assert!(
            !ids(&r).contains(&"tyo-loopnet-1"),
            "unhealthy servers leave"
        );
        // Overloaded: after every server that is not (here past the 10 listed).
        let pos = ids(&r).iter().position(|i| *i == "tyo-loopnet-2");
        assert!(
            pos.is_none_or(|p| p == r.servers.len() - 1),
            "{:?}",
            ids(&r)
        );
        assert!(!s.report("nope", 0.1, true));
    }

    #[test]
    fn unknown_networks_rank_by_country_and_load() {
        let s = service();
        let r = s.rank("203.0.113.9".parse().expect("ip"), "FR", "t-0001", 3);
        assert_eq!(r.client_isp, "");
        assert_eq!(ids(&r), ["par-homenet-1", "tyo-ix-edge-1", "sin-ix-1"]);
    }

    #[test]
    fn bad_topologies_are_rejected() {
        let e = Topology::parse("[[servers]]\nid = \"a\"\nurl = \"ftp://x\"\nisp = \"i\"\nregion = \"r\"\ncountry = \"JP\"\ntitles = [\"*\"]\n")
            .expect_err("bad url");
        assert!(e.contains("not an http(s) URL"), "{e}");
        assert!(Topology::parse("").expect_err("empty").contains("servers"));
    }
}
