//! Clusters: a named, live set of endpoints (kept current by discovery), the per-endpoint
//! counters the load balancer and the admin API read, and endpoint choice.

mod balance;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use discovery::{Endpoint, EndpointSet};
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use serde::Serialize;

use crate::config::{ClusterSpec, LoadBalancing, UpstreamProtocol};
use balance::Balancer;

/// Live state of one endpoint. Counters survive endpoint-set updates that keep the endpoint.
#[derive(Debug)]
pub struct EndpointState {
    endpoint: Endpoint,
    peer: HttpPeer,
    in_flight: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
}

impl EndpointState {
    fn new(endpoint: Endpoint, spec: &ClusterSpec) -> Self {
        let mut peer = HttpPeer::new(endpoint.address, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(spec.timeouts.connect);
        o.read_timeout = Some(spec.timeouts.read);
        o.write_timeout = Some(spec.timeouts.write);
        o.idle_timeout = Some(spec.timeouts.idle);
        if spec.protocol == UpstreamProtocol::H2c {
            // Plain text with a minimum version of 2: pingora speaks h2 with prior knowledge.
            o.alpn = ALPN::H2;
            o.max_h2_streams = spec.max_h2_streams;
        }
        Self {
            endpoint,
            peer,
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A peer to hand to pingora for one attempt.
    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }

    /// Requests currently outstanding to this endpoint.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records that an attempt to this endpoint failed (connect error, timeout, broken
    /// response).
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// An endpoint chosen for one request; it counts as in flight until dropped.
#[derive(Debug)]
pub struct Picked(Arc<EndpointState>);

impl Picked {
    fn new(state: Arc<EndpointState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.requests.fetch_add(1, Ordering::Relaxed);
        Self(state)
    }
}

impl std::ops::Deref for Picked {
    type Target = EndpointState;
    fn deref(&self) -> &EndpointState {
        &self.0
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One version of a cluster's endpoints with the balancer built for it.
#[derive(Debug)]
struct EndpointTable {
    endpoints: Vec<Arc<EndpointState>>,
    balancer: Balancer,
}

/// A named set of endpoints and how to reach and choose them.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    table: ArcSwap<EndpointTable>,
    ready: AtomicBool,
}

impl Cluster {
    /// A cluster with no endpoints yet; it is not ready until the first [`Cluster::update`].
    pub fn new(spec: ClusterSpec) -> Self {
        let table = EndpointTable {
            endpoints: Vec::new(),
            balancer: Balancer::new(&spec.load_balancing, &[]),
        };
        Self {
            spec,
            table: ArcSwap::from_pointee(table),
            ready: AtomicBool::new(false),
        }
    }

    /// The cluster's settings.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether discovery has delivered the first endpoint set.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Installs a new endpoint set. Endpoints that stay (same address and settings) keep their
    /// counters; in-flight requests keep the endpoint they were given.
    pub fn update(&self, set: &EndpointSet) {
        let current = self.table.load();
        let endpoints: Vec<Arc<EndpointState>> = set
            .iter()
            .map(|e| {
                current
                    .endpoints
                    .iter()
                    .find(|s| s.endpoint == *e)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(EndpointState::new(e.clone(), &self.spec)))
            })
            .collect();
        let weighted: Vec<(std::net::SocketAddr, u32)> = endpoints
            .iter()
            .map(|s| (s.endpoint.address, s.endpoint.weight))
            .collect();
        let balancer = Balancer::new(&self.spec.load_balancing, &weighted);
        self.table.store(Arc::new(EndpointTable {
            endpoints,
            balancer,
        }));
        self.ready.store(true, Ordering::Release);
    }

    /// Chooses an endpoint; `hash_key` is used by consistent hashing only. `None` when the
    /// cluster has no endpoints.
    pub fn pick(&self, hash_key: &[u8]) -> Option<Picked> {
        let table = self.table.load();
        let i = table.balancer.pick(&table.endpoints, hash_key)?;
        table.endpoints.get(i).cloned().map(Picked::new)
    }

    /// Whether endpoint choice needs a hash key from the request.
    pub fn hashes(&self) -> bool {
        matches!(self.spec.load_balancing, LoadBalancing::ConsistentHash(_))
    }

    /// A snapshot for the admin API.
    pub fn status(&self) -> ClusterStatus {
        let table = self.table.load();
        ClusterStatus {
            name: self.spec.name.clone(),
            ready: self.is_ready(),
            discovery: "static",
            load_balancing: match &self.spec.load_balancing {
                LoadBalancing::LeastRequest => "least_request",
                LoadBalancing::RoundRobin => "round_robin",
                LoadBalancing::ConsistentHash(_) => "consistent_hash",
            },
            protocol: match self.spec.protocol {
                UpstreamProtocol::Http1 => "http1",
                UpstreamProtocol::H2c => "h2c",
            },
            connect_timeout_ms: self.spec.timeouts.connect.as_millis() as u64,
            read_timeout_ms: self.spec.timeouts.read.as_millis() as u64,
            endpoints: table
                .endpoints
                .iter()
                .map(|s| EndpointStatus {
                    address: s.endpoint.address.to_string(),
                    weight: s.endpoint.weight,
                    in_flight: s.in_flight(),
                    requests: s.requests.load(Ordering::Relaxed),
                    failures: s.failures.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

/// Admin view of a cluster.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    name: String,
    ready: bool,
    discovery: &'static str,
    load_balancing: &'static str,
    protocol: &'static str,
    connect_timeout_ms: u64,
    read_timeout_ms: u64,
    endpoints: Vec<EndpointStatus>,
}

/// Admin view of an endpoint.
#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    address: String,
    weight: u32,
    in_flight: u64,
    requests: u64,
    failures: u64,
}
