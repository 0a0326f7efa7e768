//! Partitions of the actions. With several engines active at once, the actions are cut into
//! a fixed number of partitions and each partition's supervisors (FIFO queues, active
//! counts, rate limits) live on exactly one engine at a time. Every process computes an
//! action's partition the same way, from its ref alone, so any engine can tell where an
//! action's requests go and a worker's reports reach the engine that owns the action.

use sha2::{Digest as _, Sha256};

use crate::ActionRef;

/// The partition of `action` among `count`: the first four bytes of the SHA-256 of its ref,
/// read big-endian, modulo `count`. Stable across versions and processes: changing it would
/// send an action's reports to an engine that does not own it.
pub fn partition_of(action: &ActionRef, count: u32) -> u32 {
    assert!(count > 0, "there is at least one partition");
    let digest = Sha256::digest(action.as_str().as_bytes());
    let head = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    head % count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(s: &str) -> ActionRef {
        s.parse().unwrap()
    }

    #[test]
    fn an_action_s_partition_is_fixed_by_its_ref() {
        // Pinned: every engine and every version must agree on these.
        let pinned: Vec<u32> = ["core.noop", "core.local", "demo.slow", "demo.hello"]
            .iter()
            .map(|a| partition_of(&action(a), 4))
            .collect();
        assert_eq!(pinned, [2, 3, 1, 3]);
        assert_eq!(partition_of(&action("core.noop"), 1), 0);
    }

    #[test]
    fn actions_spread_over_the_partitions() {
        let mut counts = [0u32; 4];
        for n in 0..400 {
            counts[partition_of(&action(&format!("pack.action_{n}")), 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|c| (60..=140).contains(c)),
            "400 actions over 4 partitions: {counts:?}"
        );
    }
}
