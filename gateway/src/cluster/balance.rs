//! Endpoint choice: weighted power-of-two-choices least-request, smooth weighted round robin,
//! and ketama consistent hashing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pingora_ketama::{Bucket, Continuum};

use super::EndpointState;
use crate::config::LoadBalancing;

/// Round-robin schedules longer than this fall back to one slot per endpoint.
const MAX_SCHEDULE: u64 = 1 << 16;

pub(super) enum Balancer {
    LeastRequest {
        /// Cumulative weights, for weighted sampling of the two candidates.
        cumulative: Vec<u64>,
    },
    RoundRobin {
        schedule: Vec<usize>,
        next: AtomicUsize,
    },
    ConsistentHash {
        ring: Continuum,
        index: HashMap<SocketAddr, usize>,
    },
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::LeastRequest { .. } => "LeastRequest",
            Self::RoundRobin { .. } => "RoundRobin",
            Self::ConsistentHash { .. } => "ConsistentHash",
        };
        f.write_str(kind)
    }
}

impl Balancer {
    pub(super) fn new(policy: &LoadBalancing, endpoints: &[(SocketAddr, u32)]) -> Self {
        match policy {
            LoadBalancing::LeastRequest => Self::LeastRequest {
                cumulative: endpoints
                    .iter()
                    .scan(0u64, |acc, (_, w)| {
                        *acc += u64::from(*w);
                        Some(*acc)
                    })
                    .collect(),
            },
            LoadBalancing::RoundRobin => Self::RoundRobin {
                schedule: smooth_weighted_schedule(endpoints),
                next: AtomicUsize::new(0),
            },
            LoadBalancing::ConsistentHash(_) => {
                let buckets: Vec<Bucket> =
                    endpoints.iter().map(|(a, w)| Bucket::new(*a, *w)).collect();
                Self::ConsistentHash {
                    ring: Continuum::new(&buckets),
                    index: endpoints
                        .iter()
                        .enumerate()
                        .map(|(i, (a, _))| (*a, i))
                        .collect(),
                }
            }
        }
    }

    /// Index of the chosen endpoint, `None` when there are none.
    pub(super) fn pick(&self, endpoints: &[Arc<EndpointState>], hash_key: &[u8]) -> Option<usize> {
        match endpoints.len() {
            0 => return None,
            1 => return Some(0),
            _ => {}
        }
        match self {
            Self::LeastRequest { cumulative } => {
                let total = *cumulative.last()?;
                let first = fastrand::u64(0..total);
                let a = cumulative.partition_point(|&c| c <= first);
                // The second candidate is drawn, by weight, from the other endpoints only, so the
                // two always differ.
                let end_a = *cumulative.get(a)?;
                let start_a = if a == 0 { 0 } else { *cumulative.get(a - 1)? };
                let r = fastrand::u64(0..total - (end_a - start_a));
                let r = if r >= start_a {
                    r + (end_a - start_a)
                } else {
                    r
                };
                let b = cumulative.partition_point(|&c| c <= r);
                let (ea, eb) = (endpoints.get(a)?, endpoints.get(b)?);
                // Compare in_flight/weight without division: a*wb vs b*wa.
                let la = ea.in_flight() * u64::from(eb.endpoint.weight);
                let lb = eb.in_flight() * u64::from(ea.endpoint.weight);
                Some(if lb < la { b } else { a })
            }
            Self::RoundRobin { schedule, next } => {
                let n = next.fetch_add(1, Ordering::Relaxed);
                schedule.get(n % schedule.len().max(1)).copied()
            }
            Self::ConsistentHash { ring, index } => {
                let addr = ring.node(hash_key)?;
                index.get(&addr).copied()
            }
        }
    }
}

/// Nginx's smooth weighted round robin, unrolled into one cycle: weights 5,1,1 give
/// a a b a c a a rather than a a a a a b c.
fn smooth_weighted_schedule(endpoints: &[(SocketAddr, u32)]) -> Vec<usize> {
    let g = endpoints.iter().fold(0u32, |g, (_, w)| gcd(g, *w)).max(1);
    let weights: Vec<i64> = endpoints.iter().map(|(_, w)| i64::from(w / g)).collect();
    let total: i64 = weights.iter().sum();
    if total <= 0 || total.unsigned_abs() > MAX_SCHEDULE {
        return (0..endpoints.len()).collect();
    }
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total.unsigned_abs() as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::{ClusterSpec, HashKey};
    use discovery::Endpoint;

    /// A cluster spec with every default, as the config file would give it.
    pub(crate) fn test_spec() -> ClusterSpec {
        let text = "[[listeners]]\naddress = \"127.0.0.1:1\"\n\
                    [clusters.c]\nendpoints = [\"127.0.0.1:1\"]\n\
                    [[routes]]\nname = \"r\"\ncluster = \"c\"\n";
        let config = crate::config::Config::parse(text, std::path::Path::new("test.toml"))
            .expect("valid test config");
        config.clusters[0].clone()
    }

    fn states(weights: &[u32]) -> (Vec<Arc<EndpointState>>, Vec<(SocketAddr, u32)>) {
        let spec = test_spec();
        let eps: Vec<(SocketAddr, u32)> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| (SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)), *w))
            .collect();
        let st = eps
            .iter()
            .map(|(a, w)| Arc::new(EndpointState::new(Endpoint::new(*a).with_weight(*w), &spec)))
            .collect();
        (st, eps)
    }

    #[test]
    fn smooth_schedule_interleaves_by_weight() {
        let (_, eps) = states(&[5, 1, 1]);
        assert_eq!(smooth_weighted_schedule(&eps), vec![0, 0, 1, 0, 2, 0, 0]);
        let (_, eps) = states(&[2, 2]);
        assert_eq!(smooth_weighted_schedule(&eps), vec![0, 1], "reduced by gcd");
    }

    #[test]
    fn round_robin_cycles() {
        let (st, eps) = states(&[1, 1, 1]);
        let b = Balancer::new(&LoadBalancing::RoundRobin, &eps);
        let picks: Vec<usize> = (0..6).filter_map(|_| b.pick(&st, b"")).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let (st, eps) = states(&[1, 1]);
        st[0].in_flight.store(10, Ordering::Relaxed);
        let b = Balancer::new(&LoadBalancing::LeastRequest, &eps);
        // The two candidates always differ, so the idle endpoint always wins.
        assert!((0..200).all(|_| b.pick(&st, b"") == Some(1)));
    }

    #[test]
    fn least_request_spreads_by_weight_when_idle() {
        let (st, eps) = states(&[3, 1]);
        let b = Balancer::new(&LoadBalancing::LeastRequest, &eps);
        let heavy = (0..4000).filter(|_| b.pick(&st, b"") == Some(0)).count();
        // Ties go to the first candidate, sampled by weight: about 3/4 of picks.
        assert!(
            (2600..3400).contains(&heavy),
            "heavy endpoint chosen {heavy}/4000"
        );
    }

    #[test]
    fn consistent_hash_is_stable_per_key() {
        let (st, eps) = states(&[1, 1, 1, 1]);
        let b = Balancer::new(&LoadBalancing::ConsistentHash(HashKey::ClientIp), &eps);
        let first = b.pick(&st, b"user-42");
        assert!(first.is_some());
        assert!((0..50).all(|_| b.pick(&st, b"user-42") == first));
        let distinct: std::collections::HashSet<_> = (0..200)
            .filter_map(|i| b.pick(&st, format!("user-{i}").as_bytes()))
            .collect();
        assert_eq!(distinct.len(), 4, "keys spread over all endpoints");
    }

    #[test]
    fn least_request_is_uniform_over_idle_equal_endpoints() {
        let (st, eps) = states(&[1, 1, 1]);
        let b = Balancer::new(&LoadBalancing::LeastRequest, &eps);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[b.pick(&st, b"").expect("pick")] += 1;
        }
        assert!(counts.iter().all(|c| (850..1150).contains(c)), "{counts:?}");
    }

    #[test]
    fn empty_and_single() {
        let (st, eps) = states(&[1]);
        let b = Balancer::new(&LoadBalancing::LeastRequest, &eps);
        assert_eq!(b.pick(&st, b""), Some(0));
        assert_eq!(b.pick(&[], b""), None);
    }
}
