//! A bounded key → slot table with CLOCK eviction.
//!
//! Keyed state (z-score EWMAs, rates, gaps, repeats) lives in arrays indexed
//! by slot. The table never holds more than `capacity` keys: when full, the
//! CLOCK hand evicts a key not used since its last sweep (amortised O(1)),
//! the eviction is counted, and the slot is handed to the new key flagged as
//! fresh so its owner resets the state.

/// A key as the table holds it: 128 bits of two independently, randomly
/// seeded hashes of its text, combined with its namespace. Holding
/// fingerprints instead of strings saves two allocations per new key and a
/// pointer chase per lookup; two distinct keys share a fingerprint with
/// probability 2⁻¹²⁸ per pair, and the per-process seeds keep input from
/// steering them there.
type Fingerprint = u128;

/// The hash of a key's text, before its namespace is mixed in: computed
/// once per distinct key of a batch, it serves every feature keyed by it.
pub type KeyHash = u128;

/// Seeds of [`key_hash`], one pair per process.
static SEEDS: std::sync::LazyLock<[foldhash::fast::RandomState; 2]> =
    std::sync::LazyLock::new(Default::default);

/// The hash of `key` that [`SlotTable::slot_hashed`] takes.
pub fn key_hash(key: &str) -> KeyHash {
    use std::hash::BuildHasher;
    let [a, b] = SEEDS.each_ref().map(|seed| seed.hash_one(key));
    (u128::from(a) << 64) | u128::from(b)
}

/// The hash of a tuple from the hashes of its parts, order-sensitive:
/// distinct tuples of distinct parts collide with probability 2⁻¹²⁸.
pub fn combine(tuple: KeyHash, part: KeyHash) -> KeyHash {
    tuple
        .wrapping_mul(0xd605_bbb5_8c8a_bbe5_2545_f491_4f6c_dd1d)
        .wrapping_add(part)
        .rotate_left(47)
}

/// A distinct odd multiple per namespace: XOR-ing it in keeps one key's
/// fingerprints apart across namespaces.
fn namespace_mix(namespace: u32) -> u128 {
    (u128::from(namespace) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
}

/// Fingerprints are already uniformly random: the map uses their low bits as
/// they are instead of hashing them again.
#[derive(Clone, Copy, Debug, Default)]
struct Passthrough(u64);

impl std::hash::Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type FingerprintMap =
    std::collections::HashMap<Fingerprint, u32, std::hash::BuildHasherDefault<Passthrough>>;

/// Bounded key → slot map. Keys live in namespaces (one per keyed feature)
/// that share one slot space, so one state array can serve several features.
#[derive(Debug)]
pub struct SlotTable {
    capacity: usize,
    index: FingerprintMap,
    owner: Vec<Option<Fingerprint>>,
    referenced: Vec<bool>,
    hand: usize,
    evictions: u64,
}

impl SlotTable {
    /// A table of at most `capacity` slots (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            index: FingerprintMap::default(),
            owner: Vec::new(),
            referenced: Vec::new(),
            hand: 0,
            evictions: 0,
        }
    }

    /// Keys holding a slot.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when no key holds a slot.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots handed out so far (state arrays need at least this many).
    pub fn allocated(&self) -> usize {
        self.owner.len()
    }

    /// Keys that lost their slot to make room.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The slot of `key` in `namespace`, and whether it is fresh (first
    /// sighting, or the key was evicted since): fresh slots need their state reset.
    pub fn slot(&mut self, namespace: u32, key: &str) -> (u32, bool) {
        self.slot_hashed(namespace, key_hash(key))
    }

    /// [`Self::slot`] for a key already hashed with [`key_hash`].
    pub fn slot_hashed(&mut self, namespace: u32, key: KeyHash) -> (u32, bool) {
        let fingerprint = key ^ namespace_mix(namespace);
        if let Some(&slot) = self.index.get(&fingerprint) {
            self.referenced[slot as usize] = true;
            return (slot, false);
        }
        let slot = if self.owner.len() < self.capacity {
            self.owner.push(None);
            self.referenced.push(false);
            self.owner.len() - 1
        } else {
            self.evict()
        };
        self.owner[slot] = Some(fingerprint);
        self.referenced[slot] = true;
        self.index.insert(fingerprint, slot as u32);
        (slot as u32, true)
    }

    fn evict(&mut self) -> usize {
        loop {
            let at = self.hand;
            self.hand = (self.hand + 1) % self.owner.len();
            if self.referenced[at] {
                self.referenced[at] = false;
                continue;
            }
            if let Some(fingerprint) = self.owner[at].take() {
                self.index.remove(&fingerprint);
            }
            self.evictions += 1;
            return at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_slots_and_counts_evictions() {
        let mut t = SlotTable::new(2);
        assert_eq!(t.slot(0, "a"), (0, true));
        assert_eq!(t.slot(0, "b"), (1, true));
        assert_eq!(t.slot(0, "a"), (0, false));
        // The same key in another namespace is another key; the table is full.
        let (s, fresh) = t.slot(1, "a");
        assert!(fresh && s < 2);
        assert_eq!(t.evictions(), 1);
        assert_eq!(t.len(), 2);
        assert_eq!(t.allocated(), 2);
        assert_eq!(t.slot(1, "a"), (s, false));
    }

    #[test]
    fn clock_spares_recently_used_keys() {
        let mut t = SlotTable::new(3);
        for k in ["a", "b", "c"] {
            t.slot(0, k);
        }
        // First eviction sweeps all reference bits and takes the hand's slot ("a").
        let (_, fresh) = t.slot(0, "d");
        assert!(fresh);
        // "b" and "c" lost their bits in the sweep; touching "c" protects it.
        t.slot(0, "c");
        t.slot(0, "e");
        assert!(!t.slot(0, "c").1, "recently used key kept its slot");
        assert_eq!(t.evictions(), 2);
    }
}
