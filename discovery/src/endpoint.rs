//! Endpoints and the updates that change a service's endpoint set.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where the instance listens.
    pub address: SocketAddr,
    /// Relative share of traffic; at least 1.
    pub weight: u32,
    /// Tags (Consul service tags; e.g. `canary`), for subset routing.
    pub tags: Vec<String>,
    /// Free-form metadata (Consul service meta).
    pub meta: BTreeMap<String, String>,
}

impl Endpoint {
    /// An endpoint with weight 1 and no tags or metadata.
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            weight: 1,
            tags: Vec::new(),
            meta: BTreeMap::new(),
        }
    }

    /// Sets the weight; a weight of 0 is raised to 1 (use removal to take an endpoint out).
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }
}

/// A change to a service's endpoint set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Replace the whole set with these endpoints.
    Reset(Vec<Endpoint>),
    /// Add an endpoint, or replace the one with the same address.
    Upsert(Endpoint),
    /// Remove the endpoint with this address (no-op when absent).
    Remove(SocketAddr),
}

/// The current endpoints of one service, ordered by address so that every consumer sees the
/// same order (consistent hashing and round robin depend on it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSet {
    endpoints: BTreeMap<SocketAddr, Endpoint>,
}

impl EndpointSet {
    /// Builds a set from endpoints; a later duplicate address replaces an earlier one.
    pub fn from_endpoints(endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(|e| (e.address, e)).collect(),
        }
    }

    /// Applies an update and returns whether the set changed.
    pub fn apply(&mut self, update: Update) -> bool {
        match update {
            Update::Reset(endpoints) => {
                let next = Self::from_endpoints(endpoints);
                let changed = next != *self;
                *self = next;
                changed
            }
            Update::Upsert(endpoint) => {
                let address = endpoint.address;
                self.endpoints.insert(address, endpoint.clone()) != Some(endpoint)
            }
            Update::Remove(address) => self.endpoints.remove(&address).is_some(),
        }
    }

    /// The updates that turn this set into `next`: upserts of new or changed endpoints, then
    /// removals, in address order.
    pub fn diff(&self, next: &EndpointSet) -> Vec<Update> {
        let upserts = next
            .iter()
            .filter(|e| self.endpoints.get(&e.address) != Some(*e))
            .cloned()
            .map(Update::Upsert);
        let removals = self
            .endpoints
            .keys()
            .filter(|a| !next.endpoints.contains_key(*a))
            .copied()
            .map(Update::Remove);
        upserts.chain(removals).collect()
    }

    /// The endpoints, ordered by address.
    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn reset_replaces_and_reports_change() {
        let mut set = EndpointSet::default();
        assert!(set.apply(Update::Reset(vec![ep(2), ep(1)])));
        let ports: Vec<u16> = set.iter().map(|e| e.address.port()).collect();
        assert_eq!(ports, vec![1, 2], "ordered by address");
        assert!(
            !set.apply(Update::Reset(vec![ep(1), ep(2)])),
            "same set is no change"
        );
        assert!(set.apply(Update::Reset(vec![ep(3)])));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn upsert_and_remove() {
        let mut set = EndpointSet::from_endpoints([ep(1)]);
        assert!(set.apply(Update::Upsert(ep(2))));
        assert!(
            !set.apply(Update::Upsert(ep(2))),
            "identical upsert is no change"
        );
        assert!(
            set.apply(Update::Upsert(ep(2).with_weight(5))),
            "weight change is a change"
        );
        assert!(set.apply(Update::Remove(ep(1).address)));
        assert!(!set.apply(Update::Remove(ep(1).address)));
        assert_eq!(set.iter().map(|e| e.weight).collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn diff_applied_gives_the_next_set() {
        let before = EndpointSet::from_endpoints([ep(1), ep(2), ep(3)]);
        let after = EndpointSet::from_endpoints([ep(2).with_weight(4), ep(3), ep(5)]);
        let updates = before.diff(&after);
        assert_eq!(
            updates,
            vec![
                Update::Upsert(ep(2).with_weight(4)),
                Update::Upsert(ep(5)),
                Update::Remove(ep(1).address),
            ]
        );
        let mut set = before.clone();
        for u in updates {
            set.apply(u);
        }
        assert_eq!(set, after);
        assert!(after.diff(&after).is_empty());
    }

    #[test]
    fn zero_weight_is_raised_to_one() {
        assert_eq!(ep(1).with_weight(0).weight, 1);
    }
}
