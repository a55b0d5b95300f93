//! A bounded key → slot table with CLOCK eviction.
//!
//! Keyed state (z-score EWMAs, rates, gaps, repeats) lives in arrays indexed
//! by slot. The table never holds more than `capacity` keys: when full, the
//! CLOCK hand evicts a key not used since its last sweep (amortised O(1)),
//! the eviction is counted, and the slot is handed to the new key flagged as
//! fresh so its owner resets the state.

/// Keys come from the input: a fast hasher, seeded per process.
type HashMap<K, V> = foldhash::HashMap<K, V>;

/// Bounded key → slot map. Keys live in namespaces (one per keyed feature)
/// that share one slot space, so one state array can serve several features.
#[derive(Debug)]
pub struct SlotTable {
    capacity: usize,
    maps: Vec<HashMap<String, u32>>,
    owner: Vec<Option<(u32, String)>>,
    referenced: Vec<bool>,
    hand: usize,
    evictions: u64,
}

impl SlotTable {
    /// A table of at most `capacity` slots (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            maps: Vec::new(),
            owner: Vec::new(),
            referenced: Vec::new(),
            hand: 0,
            evictions: 0,
        }
    }

    /// Keys holding a slot.
    pub fn len(&self) -> usize {
        self.maps.iter().map(HashMap::len).sum()
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
        let ns = namespace as usize;
        if self.maps.len() <= ns {
            self.maps.resize_with(ns + 1, HashMap::default);
        }
        if let Some(&slot) = self.maps[ns].get(key) {
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
        self.owner[slot] = Some((namespace, key.to_owned()));
        self.referenced[slot] = true;
        self.maps[ns].insert(key.to_owned(), slot as u32);
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
            if let Some((ns, key)) = self.owner[at].take() {
                self.maps[ns as usize].remove(&key);
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
