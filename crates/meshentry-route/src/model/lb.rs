//! Choosing an endpoint: Istio's default LEAST_REQUEST and DestinationRule
//! `trafficPolicy.loadBalancer.simple` (ROUND_ROBIN, LEAST_REQUEST, RANDOM; PASSTHROUGH is
//! handled by the caller, which dials the original destination), honouring endpoint weights.
//!
//! State is atomics inside the host list, shared by all workers without locks. A pick can
//! exclude the hosts already tried for the same request, so a host that refused a connection
//! is tried at most once per request.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// `loadBalancer.simple`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
}

/// Per-host balancing state.
#[derive(Debug)]
pub struct HostLoad {
    /// Requests (or connections) in flight to this host.
    pub active: AtomicU32,
    /// Relative weight, at least 1 (`weight: 0` means unset in Istio: 1).
    pub weight: u32,
}

impl HostLoad {
    pub fn new(weight: u32) -> Self {
        Self {
            active: AtomicU32::new(0),
            weight: weight.max(1),
        }
    }
}

impl AsRef<HostLoad> for HostLoad {
    fn as_ref(&self) -> &HostLoad {
        self
    }
}

/// Hosts already tried for one request: a bitmask over the first 64 hosts (a request that
/// exhausts 64 hosts has bigger problems than fairness).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    pub fn add(&mut self, i: usize) {
        if i < 64 {
            self.0 |= 1 << i;
        }
    }

    pub fn contains(self, i: usize) -> bool {
        i < 64 && self.0 & (1 << i) != 0
    }

    pub fn count(self) -> u32 {
        self.0.count_ones()
    }
}

/// The balancer of one host list.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    cursor: AtomicUsize,
    /// Smooth weighted round robin, precomputed as an order of host indexes (empty when all
    /// weights are equal: then plain rotation).
    schedule: Box<[u32]>,
    total_weight: u64,
    equal_weights: bool,
}

/// Longest precomputed weighted schedule; beyond it weights are scaled down.
const MAX_SCHEDULE: u64 = 4096;

impl Balancer {
    pub fn new<H: AsRef<HostLoad>>(policy: Policy, hosts: &[H]) -> Self {
        let equal_weights = hosts.windows(2).all(|w| w[0].as_ref().weight == w[1].as_ref().weight);
        let total_weight: u64 = hosts.iter().map(|h| u64::from(h.as_ref().weight)).sum();
        let schedule = if policy == Policy::RoundRobin && !equal_weights {
            smooth_schedule(hosts, total_weight)
        } else {
            Box::default()
        };
        Self {
            policy,
            cursor: AtomicUsize::new(0),
            schedule,
            total_weight,
            equal_weights,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The next host, skipping `tried`; `None` when every host was tried or there are none.
    pub fn pick<H: AsRef<HostLoad>>(&self, hosts: &[H], tried: Tried) -> Option<usize> {
        let n = hosts.len();
        if n == 0 || tried.count() as usize >= n.min(64) && n <= 64 {
            return None;
        }
        let pick = match self.policy {
            Policy::RoundRobin => self.round_robin(n),
            Policy::Random => self.weighted_random(hosts),
            Policy::LeastRequest => self.least_request(hosts),
        };
        if !tried.contains(pick) {
            return Some(pick);
        }
        // Rare: the natural choice was tried already; take the next untried one in order.
        (1..n).map(|k| (pick + k) % n).find(|&i| !tried.contains(i))
    }

    fn round_robin(&self, n: usize) -> usize {
        let c = self.cursor.fetch_add(1, Ordering::Relaxed);
        if self.schedule.is_empty() {
            c % n
        } else {
            self.schedule[c % self.schedule.len()] as usize
        }
    }

    fn weighted_random<H: AsRef<HostLoad>>(&self, hosts: &[H]) -> usize {
        if self.equal_weights {
            return fastrand::usize(..hosts.len());
        }
        let mut r = fastrand::u64(..self.total_weight.max(1));
        for (i, h) in hosts.iter().enumerate() {
            let w = u64::from(h.as_ref().weight);
            if r < w {
                return i;
            }
            r -= w;
        }
        hosts.len() - 1
    }

    /// Envoy's LEAST_REQUEST: the better of two random choices (power of two choices); with
    /// unequal weights, load is divided by weight so heavier hosts take more.
    fn least_request<H: AsRef<HostLoad>>(&self, hosts: &[H]) -> usize {
        let n = hosts.len();
        if n == 1 {
            return 0;
        }
        let (a, b) = if self.equal_weights {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            (a, b)
        } else {
            let a = self.weighted_random(hosts);
            let mut b = self.weighted_random(hosts);
            if b == a {
                b = (a + 1) % n;
            }
            (a, b)
        };
        let score = |i: usize| {
            let h = hosts[i].as_ref();
            (u64::from(h.active.load(Ordering::Relaxed)) + 1) * 1_000_000 / u64::from(h.weight)
        };
        if score(b) < score(a) { b } else { a }
    }
}

/// nginx's smooth weighted round robin, unrolled into one period so picks need only a cursor.
fn smooth_schedule<H: AsRef<HostLoad>>(hosts: &[H], total: u64) -> Box<[u32]> {
    let scale = total.div_ceil(MAX_SCHEDULE).max(1);
    let weights: Vec<i64> = hosts
        .iter()
        .map(|h| (u64::from(h.as_ref().weight) / scale).max(1) as i64)
        .collect();
    let period: i64 = weights.iter().sum();
    let mut current = vec![0i64; hosts.len()];
    let mut out = Vec::with_capacity(period as usize);
    for _ in 0..period {
        let mut best = 0;
        for i in 0..current.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= period;
        out.push(best as u32);
    }
    out.into_boxed_slice()
}

/// Counts a request in flight on a host for as long as it lives.
pub struct InFlight<'a>(&'a HostLoad);

impl<'a> InFlight<'a> {
    pub fn start(host: &'a HostLoad) -> Self {
        host.active.fetch_add(1, Ordering::Relaxed);
        Self(host)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(weights: &[u32]) -> Vec<HostLoad> {
        weights.iter().map(|w| HostLoad::new(*w)).collect()
    }

    fn counts(b: &Balancer, hs: &[HostLoad], n: usize) -> Vec<usize> {
        let mut c = vec![0; hs.len()];
        for _ in 0..n {
            c[b.pick(hs, Tried::default()).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn round_robin_rotates_and_honours_weights_smoothly() {
        let hs = hosts(&[1, 1, 1]);
        let b = Balancer::new(Policy::RoundRobin, &hs);
        let picks: Vec<usize> = (0..6).map(|_| b.pick(&hs, Tried::default()).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);

        let hs = hosts(&[5, 1, 1]);
        let b = Balancer::new(Policy::RoundRobin, &hs);
        let picks: Vec<usize> = (0..7).map(|_| b.pick(&hs, Tried::default()).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0], "smooth: the heavy host is interleaved");
    }

    #[test]
    fn random_follows_weights() {
        let hs = hosts(&[3, 1]);
        let b = Balancer::new(Policy::Random, &hs);
        let c = counts(&b, &hs, 40_000);
        let share = c[0] as f64 / 40_000.0;
        assert!((0.72..0.78).contains(&share), "{c:?}");
    }

    #[test]
    fn least_request_prefers_idle_hosts() {
        let hs = hosts(&[1, 1, 1, 1]);
        hs[0].active.store(100, Ordering::Relaxed);
        hs[1].active.store(100, Ordering::Relaxed);
        let b = Balancer::new(Policy::LeastRequest, &hs);
        let c = counts(&b, &hs, 10_000);
        // Two random choices include an idle host unless both land on a busy one (1/6).
        let idle = (c[2] + c[3]) as f64 / 10_000.0;
        assert!(idle > 0.78, "{c:?}");
        // And with equal load it spreads evenly.
        let hs = hosts(&[1, 1, 1]);
        let c = counts(&Balancer::new(Policy::LeastRequest, &hs), &hs, 30_000);
        assert!(c.iter().all(|&x| (9_000..11_000).contains(&x)), "{c:?}");
    }

    #[test]
    fn least_request_weights() {
        let hs = hosts(&[4, 1]);
        let c = counts(&Balancer::new(Policy::LeastRequest, &hs), &hs, 20_000);
        assert!(c[0] > c[1] * 3, "{c:?}");
    }

    #[test]
    fn tried_hosts_are_skipped_then_exhausted() {
        for policy in [Policy::RoundRobin, Policy::Random, Policy::LeastRequest] {
            let hs = hosts(&[1, 1, 1]);
            let b = Balancer::new(policy, &hs);
            let mut tried = Tried::default();
            let mut seen = Vec::new();
            while let Some(i) = b.pick(&hs, tried) {
                assert!(!seen.contains(&i), "{policy:?} picked {i} twice");
                seen.push(i);
                tried.add(i);
            }
            seen.sort();
            assert_eq!(seen, [0, 1, 2], "{policy:?}");
        }
        let none: [HostLoad; 0] = [];
        let b = Balancer::new(Policy::RoundRobin, &none);
        assert_eq!(b.pick(&none, Tried::default()), None);
    }

    #[test]
    fn in_flight_counts() {
        let h = HostLoad::new(0);
        assert_eq!(h.weight, 1);
        {
            let _a = InFlight::start(&h);
            let _b = InFlight::start(&h);
            assert_eq!(h.active.load(Ordering::Relaxed), 2);
        }
        assert_eq!(h.active.load(Ordering::Relaxed), 0);
    }
}
