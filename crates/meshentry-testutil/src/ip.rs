//! Loopback addresses that are unique per test, across threads and across test processes.
//!
//! Linux routes all of `127.0.0.0/8` to the loopback interface, so each test can own a whole
//! address and bind any fixed port on it. Addresses are handed out in blocks of 253
//! (`127.x.y.2` to `127.x.y.254`). A process claims a block by binding a UDP socket on the block's
//! `.255` address (never handed to a test) and keeping it open for the rest of its life; another
//! process that finds the claim taken moves to the next block. Starting the search at a block
//! derived from the pid keeps concurrent processes apart without contention in the common case.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Mutex;

/// Blocks live in `127.2.0.0` to `127.251.255.0`: `127.0.x.x` holds 127.0.0.1 and the systemd
/// stub resolver 127.0.0.53, `127.1.x.x` holds Debian's 127.0.1.1 hostname address, and the top
/// of the range is left to anything else that picks "high" loopback addresses by hand.
const FIRST_X: u32 = 2;
const BLOCKS: u32 = 250 * 256;
/// The port of the claim socket; UDP so it never interferes with the TCP ports tests bind.
const CLAIM_PORT: u16 = 9;
const FIRST_Z: u8 = 2;
const LAST_Z: u8 = 254;

struct State {
    /// Index of the block this process currently hands out from, if it claimed one.
    block: Option<u32>,
    next_z: u8,
    /// The claim sockets: held until the process exits, so the blocks stay ours.
    claims: Vec<UdpSocket>,
}

static STATE: Mutex<State> = Mutex::new(State {
    block: None,
    next_z: FIRST_Z,
    claims: Vec::new(),
});

fn block_base(block: u32) -> (u8, u8) {
    // BLOCKS < 251 * 256, so both parts fit in a byte.
    let x = (FIRST_X + block / 256) as u8;
    let y = (block % 256) as u8;
    (x, y)
}

/// Claims the first free block at or after `start`, wrapping around.
fn claim_block(start: u32, claims: &mut Vec<UdpSocket>) -> u32 {
    in_process_network_namespace(|| {
        for i in 0..BLOCKS {
            let block = (start + i) % BLOCKS;
            let (x, y) = block_base(block);
            let claim = SocketAddrV4::new(Ipv4Addr::new(127, x, y, 255), CLAIM_PORT);
            if let Ok(sock) = UdpSocket::bind(claim) {
                claims.push(sock);
                return block;
            }
        }
        panic!("unique_loopback: every loopback block is claimed by another process");
    })
}

/// Runs `f` in the network namespace of the process's main thread. A test thread inside a
/// namespace of its own ([`crate::Netns::block_on`]) may be the first to ask for an address;
/// a claim made there would be invisible to other processes, which would then hand out the
/// same block to their tests in the main namespace, where this process's other tests use it.
fn in_process_network_namespace<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let ns = |path: &str| {
        std::fs::metadata(path)
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    };
    let ours = ns("/proc/thread-self/ns/net");
    if ours.is_none() || ours == ns("/proc/self/ns/net") {
        return f();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let main = std::fs::File::open("/proc/self/ns/net")
                    .unwrap_or_else(|e| panic!("unique_loopback: cannot open the process's network namespace: {e}"));
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&main),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("unique_loopback: cannot enter the process's network namespace: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
    })
}

/// Returns a `127.x.y.z` address no other caller in this process or in any other process using
/// this crate has been given, never 127.0.0.1, 127.0.0.53 or 127.0.1.1.
///
/// The address is reserved for the life of the process; bind whatever ports the test needs on it.
pub fn unique_loopback() -> Ipv4Addr {
    // A panic while holding the lock leaves valid state behind, so recover from poisoning.
    let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let block = match st.block {
        Some(b) if st.next_z <= LAST_Z => b,
        previous => {
            let start = match previous {
                Some(b) => b + 1,
                None => std::process::id().wrapping_mul(7919) % BLOCKS,
            };
            let b = claim_block(start, &mut st.claims);
            st.block = Some(b);
            st.next_z = FIRST_Z;
            b
        }
    };
    let z = st.next_z;
    st.next_z += 1;
    let (x, y) = block_base(block);
    Ipv4Addr::new(127, x, y, z)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn addresses_are_unique_and_avoid_well_known_ones() {
        let mut seen = HashSet::new();
        // More than one block, to cover moving to the next block.
        for _ in 0..600 {
            let ip = unique_loopback();
            assert!(ip.is_loopback());
            assert!(ip.octets()[1] >= 2, "{ip}");
            assert!((2..=254).contains(&ip.octets()[3]), "{ip}");
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
    }

    #[test]
    fn a_claimed_block_is_skipped() {
        let ip = unique_loopback();
        // The claim of our own block is held, so binding it again must fail.
        let [_, x, y, _] = ip.octets();
        let claim = SocketAddrV4::new(Ipv4Addr::new(127, x, y, 255), CLAIM_PORT);
        assert!(UdpSocket::bind(claim).is_err());
    }
}
