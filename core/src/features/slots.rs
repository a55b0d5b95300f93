//! A bounded key → slot table with CLOCK eviction.
//!
//! Keyed state (z-score EWMAs, rates, gaps, repeats) lives in arrays indexed
//! by slot. The table never holds more than `capacity` keys: when full, the
//! CLOCK hand evicts a key not used since its last sweep (amortised O(1)),
//! the eviction is counted, and the slot is handed to the new key flagged as
//! fresh so its owner resets the state.
//!
//! Each key also carries the input partition that last looked it up, so
//! that the state of partitions a consumer gives up can be released
//! ([`SlotTable::release`]) instead of lingering until they come back stale.

/// A key as the table holds it: 80 bits of two independently, randomly
/// seeded hashes of its text, combined with its namespace. Holding
/// fingerprints instead of strings saves two allocations per new key and a
/// pointer chase per lookup; two distinct keys share a fingerprint with
/// probability 2⁻⁸⁰ per pair (about 4·10⁻¹³ over a million keys), and the
/// per-process seeds keep input from steering them there. 80 bits leave
/// room for the owner and the slot in a 16-byte bucket.
pub type Fingerprint = u128;

/// The input partition a key's state belongs to, as the table holds it:
/// the partition number's low 16 bits (partitions 65,536 apart share an
/// owner; records read from no partition have owner 0).
pub type Owner = u16;

/// The owner of records from `partition`.
pub fn owner_of(partition: i32) -> Owner {
    partition as u32 as Owner
}

pub use crate::input::key::{combine, key_hash, KeyHash};

/// A distinct odd multiple per namespace: XOR-ing it in keeps one key's
/// fingerprints apart across namespaces.
fn namespace_mix(namespace: u32) -> u128 {
    (u128::from(namespace) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
}

/// One entry of the table's index, 16 bytes, four to a cache line: the
/// fingerprint in the high 80 bits; below it the key's [`Owner`], the
/// CLOCK reference bit (the key was used since the hand last passed) and
/// the key's slot plus one. An empty bucket is all zeros. The owner sits in
/// the bucket, not beside the state, so that keeping it costs no memory
/// access a lookup does not already make.
type Bucket = u128;

/// Where a bucket's fingerprint starts.
const FINGERPRINT_SHIFT: u32 = 48;
/// The bits a fingerprint may have.
const FINGERPRINT_MASK: Fingerprint = (1 << (128 - FINGERPRINT_SHIFT)) - 1;
/// Where a bucket's owner starts.
const OWNER_SHIFT: u32 = 32;
/// The bits of a bucket that hold its owner.
const OWNER_BITS: u128 = 0xffff << OWNER_SHIFT;

/// The bits of a bucket that hold its slot plus one (zero when empty).
const SLOT_BITS: u128 = 0x7fff_ffff;
/// The CLOCK reference bit of a bucket.
const REFERENCED: u128 = 0x8000_0000;
/// The most slots a table can hold: the slot field's largest value, less one.
pub const MAX_CAPACITY: usize = SLOT_BITS as usize - 1;

/// The bucket holding `slot` for `fingerprint` of `owner`, referenced.
fn bucket(fingerprint: Fingerprint, owner: Owner, slot: usize) -> Bucket {
    (fingerprint << FINGERPRINT_SHIFT)
        | (u128::from(owner) << OWNER_SHIFT)
        | REFERENCED
        | (slot as u128 + 1)
}

/// The slot a bucket holds, if any.
#[inline]
fn slot_of(bucket: Bucket) -> Option<usize> {
    ((bucket & SLOT_BITS) as usize).checked_sub(1)
}

/// The fingerprint a bucket holds.
#[inline]
fn fingerprint_of(bucket: Bucket) -> Fingerprint {
    bucket >> FINGERPRINT_SHIFT
}

/// The owner a bucket holds.
#[inline]
fn owner_in(bucket: Bucket) -> Owner {
    ((bucket & OWNER_BITS) >> OWNER_SHIFT) as Owner
}

/// Buckets of a new table's index.
const MIN_BUCKETS: usize = 16;

/// Bounded key → slot map. Keys live in namespaces (one per keyed feature)
/// that share one slot space, so one state array can serve several features.
///
/// The index is open addressing with linear probing, at most half full,
/// keyed by the fingerprint's low bits. It is written out here rather than
/// taken from a general map so that a batch can [`Self::prefetch`] the
/// bucket of a record some rows ahead: a stream of mostly new keys (a
/// duplicate detector's key, amount and merchant) otherwise waits on a
/// cache miss per record. The CLOCK hand sweeps the buckets, whose
/// reference bits sit beside the fingerprints they protect.
#[derive(Debug)]
pub struct SlotTable {
    capacity: usize,
    buckets: Vec<Bucket>,
    len: usize,
    allocated: usize,
    hand: usize,
    evictions: u64,
    /// Slots of released keys, handed out before new ones.
    free: Vec<u32>,
    /// The owner of the keys looked up from now on.
    owner: Owner,
    /// Keys changed since last taken, when a changelog follows the table.
    changes: Option<Box<Changes>>,
}

/// What changed in a table since its changes were last taken: the keys
/// used (each once, as it is now) and the keys evicted.
#[derive(Debug, Default)]
struct Changes {
    /// Per slot, its place in `used`, or [`UNMARKED`].
    marks: Vec<u32>,
    /// Buckets of the keys used, as of their latest use.
    used: Vec<Bucket>,
    /// Evicted keys with their owner.
    evicted: Vec<(Owner, Fingerprint)>,
}

/// A slot not in [`Changes::used`].
const UNMARKED: u32 = u32::MAX;

impl Changes {
    #[inline]
    fn mark(&mut self, slot: usize, bucket: Bucket) {
        if slot >= self.marks.len() {
            self.marks.resize(slot + 1, UNMARKED);
        }
        match self.marks[slot] {
            UNMARKED => {
                self.marks[slot] = self.used.len() as u32;
                self.used.push(bucket);
            }
            // The key of the slot now: after an eviction, the new one.
            at => self.used[at as usize] = bucket,
        }
    }

    /// Forgets the changes of keys owned by one of `owners`.
    fn forget(&mut self, owners: &[Owner]) {
        self.evicted.retain(|(o, _)| !owners.contains(o));
        let used = std::mem::take(&mut self.used);
        self.marks.fill(UNMARKED);
        for bucket in used.into_iter().filter(|b| !owners.contains(&owner_in(*b))) {
            let slot = slot_of(bucket).expect("a used bucket holds a slot");
            self.mark(slot, bucket);
        }
    }
}

/// A key whose state changed, as [`SlotTable::take_changes`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Changed {
    /// The partition owning the key.
    pub owner: Owner,
    /// The key's fingerprint (its namespace mixed in).
    pub key: Fingerprint,
    /// Its slot; `None` when the key was evicted and holds no state.
    pub slot: Option<u32>,
}

impl SlotTable {
    /// A table of at most `capacity` slots (at least 1, at most [`MAX_CAPACITY`]).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.clamp(1, MAX_CAPACITY),
            buckets: vec![0; MIN_BUCKETS],
            len: 0,
            allocated: 0,
            hand: 0,
            evictions: 0,
            free: Vec::new(),
            owner: 0,
            changes: None,
        }
    }

    /// Starts noting which keys change, for [`Self::take_changes`].
    pub fn track_changes(&mut self) {
        self.changes.get_or_insert_with(Default::default);
    }

    /// The keys used (and so possibly changed) and the keys evicted since
    /// last asked, evictions first, each key once; empty unless
    /// [`Self::track_changes`] was called. A key evicted and back since is
    /// reported both ways, in that order.
    pub fn take_changes(&mut self) -> Vec<Changed> {
        let Some(changes) = self.changes.as_mut() else {
            return Vec::new();
        };
        let mut out: Vec<Changed> = changes
            .evicted
            .drain(..)
            .map(|(owner, key)| Changed {
                owner,
                key,
                slot: None,
            })
            .collect();
        for bucket in changes.used.drain(..) {
            let slot = slot_of(bucket).expect("a used bucket holds a slot");
            changes.marks[slot] = UNMARKED;
            out.push(Changed {
                owner: owner_in(bucket),
                key: fingerprint_of(bucket),
                slot: Some(slot as u32),
            });
        }
        out
    }

    /// The slot of the key with fingerprint `key` (as [`Changed::key`]
    /// gives it), now owned by `owner`, and whether it is fresh: how
    /// restored state finds its place. Not reported as a change.
    pub fn restore(&mut self, owner: Owner, key: Fingerprint) -> (u32, bool) {
        let before = std::mem::replace(&mut self.owner, owner);
        let used = self.changes.as_ref().map_or(0, |c| c.used.len());
        let placed = self.slot_fingerprint(key & FINGERPRINT_MASK);
        self.owner = before;
        // The changelog holds it as restored; a key evicted to make room
        // stays reported.
        if let Some(changes) = self.changes.as_mut() {
            if changes.used.len() > used {
                changes.used.pop();
                changes.marks[placed.0 as usize] = UNMARKED;
            }
        }
        placed
    }

    /// Keys holding a slot.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no key holds a slot.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes the keys looked up from now on belong to `owner` (a key
    /// belongs to the partition that last looked it up).
    #[inline]
    pub fn set_owner(&mut self, owner: Owner) {
        self.owner = owner;
    }

    /// Forgets every key that belongs to one of `owners`, as if never
    /// seen: their slots go to new keys, fresh. Returns how many keys went.
    /// Takes one pass over the index; meant for rebalances, not records.
    pub fn release(&mut self, owners: &[Owner]) -> usize {
        if owners.is_empty() || self.len == 0 {
            return 0;
        }
        let size = self.buckets.len();
        let old = std::mem::replace(&mut self.buckets, std::iter::repeat_n(0, size).collect());
        let mut released = 0;
        for bucket in old.into_iter().filter(|&b| b != 0) {
            if owners.contains(&owner_in(bucket)) {
                let slot = slot_of(bucket).expect("a full bucket holds a slot");
                self.free.push(slot as u32);
                released += 1;
            } else {
                self.place(bucket);
            }
        }
        self.len -= released;
        self.hand = 0;
        if let Some(changes) = self.changes.as_mut() {
            changes.forget(owners);
        }
        released
    }

    /// Slots handed out so far (state arrays need at least this many).
    pub fn allocated(&self) -> usize {
        self.allocated
    }

    /// Keys that lost their slot to make room.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Keys held as a share of capacity: at 1 each new key evicts one.
    pub fn fill(&self) -> f64 {
        self.len as f64 / self.capacity as f64
    }

    /// The slot of `key` in `namespace`, and whether it is fresh (first
    /// sighting, or the key was evicted since): fresh slots need their state reset.
    pub fn slot(&mut self, namespace: u32, key: &str) -> (u32, bool) {
        self.slot_hashed(namespace, key_hash(key))
    }

    /// [`Self::slot`] for a key already hashed with [`key_hash`].
    pub fn slot_hashed(&mut self, namespace: u32, key: KeyHash) -> (u32, bool) {
        self.slot_fingerprint(fingerprint(namespace, key))
    }

    #[inline]
    fn slot_fingerprint(&mut self, fingerprint: Fingerprint) -> (u32, bool) {
        let at = self.probe(fingerprint);
        let found = &mut self.buckets[at];
        if let Some(slot) = slot_of(*found) {
            *found = (*found & !OWNER_BITS) | (u128::from(self.owner) << OWNER_SHIFT) | REFERENCED;
            if let Some(changes) = self.changes.as_mut() {
                changes.mark(slot, *found);
            }
            return (slot as u32, false);
        }
        let slot = if let Some(slot) = self.free.pop() {
            slot as usize
        } else if self.allocated < self.capacity {
            self.allocated += 1;
            self.allocated - 1
        } else {
            self.evict()
        };
        if (self.len + 1) * 2 > self.buckets.len() {
            self.grow();
        }
        // An eviction or a growth moves buckets: probe again.
        let placed = bucket(fingerprint, self.owner, slot);
        self.place(placed);
        if let Some(changes) = self.changes.as_mut() {
            changes.mark(slot, placed);
        }
        self.len += 1;
        (slot as u32, true)
    }

    /// Starts loading the bucket [`Self::slot_hashed`] will look at first
    /// for `key` in `namespace`, so that a lookup a few records later finds
    /// it in cache.
    #[inline]
    pub fn prefetch(&self, namespace: u32, key: KeyHash) {
        let at = home(fingerprint(namespace, key)) & (self.buckets.len() - 1);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch never faults, and the address is in bounds.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // Four buckets share a line; a probe rarely runs past it.
            _mm_prefetch::<_MM_HINT_T0>(self.buckets.as_ptr().add(at).cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = at;
    }

    /// The slot of `key` in `namespace`, if it holds one, without touching it.
    #[cfg(test)]
    fn lookup(&self, namespace: u32, key: &str) -> Option<u32> {
        let at = self.probe(fingerprint(namespace, key_hash(key)));
        slot_of(self.buckets[at]).map(|slot| slot as u32)
    }

    /// The bucket holding `fingerprint`, else the empty one that ends its
    /// probe run (where it would go).
    #[inline]
    fn probe(&self, fingerprint: Fingerprint) -> usize {
        let mask = self.buckets.len() - 1;
        let mut at = home(fingerprint) & mask;
        loop {
            let b = self.buckets[at];
            if b == 0 || fingerprint_of(b) == fingerprint {
                return at;
            }
            at = (at + 1) & mask;
        }
    }

    /// Puts `bucket`, whose fingerprint the index does not hold, in the
    /// first empty bucket from its home.
    fn place(&mut self, bucket: Bucket) {
        let at = self.probe(fingerprint_of(bucket));
        self.buckets[at] = bucket;
    }

    fn grow(&mut self) {
        // Filled, not allocated zeroed: mimalloc serves a large zeroed
        // block straight from the OS and unmaps it when freed, and each
        // unmapping interrupts the process's other threads to flush their
        // TLBs (measured: 5% more CPU per record through the pipeline).
        let doubled = std::iter::repeat_n(0, self.buckets.len() * 2).collect();
        let old = std::mem::replace(&mut self.buckets, doubled);
        for bucket in old.into_iter().filter(|&b| b != 0) {
            self.place(bucket);
        }
        self.hand = 0;
    }

    /// Takes the slot of a key not used since the hand last passed it.
    fn evict(&mut self) -> usize {
        let mask = self.buckets.len() - 1;
        loop {
            let at = self.hand;
            self.hand = (self.hand + 1) & mask;
            let bucket = &mut self.buckets[at];
            let Some(slot) = slot_of(*bucket) else {
                continue;
            };
            if *bucket & REFERENCED != 0 {
                *bucket &= !REFERENCED;
                continue;
            }
            let gone = *bucket;
            self.remove(at);
            self.len -= 1;
            self.evictions += 1;
            if let Some(changes) = self.changes.as_mut() {
                changes.evicted.push((owner_in(gone), fingerprint_of(gone)));
            }
            return slot;
        }
    }

    /// Empties bucket `at`, shifting later buckets of its probe run back so
    /// that every key stays reachable from its home without tombstones.
    fn remove(&mut self, mut hole: usize) {
        let mask = self.buckets.len() - 1;
        let mut at = hole;
        loop {
            at = (at + 1) & mask;
            let bucket = self.buckets[at];
            if bucket == 0 {
                break;
            }
            // It may move into the hole when the hole lies on its probe
            // path, between its home and where it sits.
            let from_home = at.wrapping_sub(home(fingerprint_of(bucket))) & mask;
            if from_home >= (at.wrapping_sub(hole) & mask) {
                self.buckets[hole] = bucket;
                hole = at;
            }
        }
        self.buckets[hole] = 0;
    }
}

/// The fingerprint of `key` in `namespace`: the high 80 bits of the key's
/// hash with the namespace mixed in.
#[inline]
fn fingerprint(namespace: u32, key: KeyHash) -> Fingerprint {
    (key ^ namespace_mix(namespace)) >> FINGERPRINT_SHIFT
}

/// Where a fingerprint's probe starts, before masking: its low bits, which
/// are as random as the rest.
#[inline]
fn home(fingerprint: Fingerprint) -> usize {
    fingerprint as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_slots_and_counts_evictions() {
        let mut t = SlotTable::new(2);
        assert_eq!(t.slot(0, "a"), (0, true));
        assert_eq!(t.fill(), 0.5);
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
        // The first eviction sweeps every reference bit and takes one key.
        assert!(t.slot(0, "d").1);
        let survivors: Vec<&str> = ["a", "b", "c"]
            .into_iter()
            .filter(|k| t.lookup(0, k).is_some())
            .collect();
        assert_eq!(survivors.len(), 2, "{survivors:?}");
        // Touching one survivor protects it: the next eviction takes the other.
        assert!(!t.slot(0, survivors[0]).1);
        assert!(t.slot(0, "e").1);
        assert!(t.lookup(0, survivors[1]).is_none(), "untouched key evicted");
        assert!(
            !t.slot(0, survivors[0]).1,
            "recently used key kept its slot"
        );
        assert!(!t.slot(0, "d").1, "key newer than the sweep kept its slot");
        assert_eq!(t.evictions(), 2);
    }

    /// A released partition's keys are gone (fresh on return, their slots
    /// reused before any eviction); other partitions' keys stay, and a key
    /// belongs to the partition that looked it up last.
    #[test]
    fn releasing_a_partition_forgets_its_keys_only() {
        let mut t = SlotTable::new(6);
        let mut slots = std::collections::HashMap::new();
        for (partition, keys) in [(0, ["a", "b", "c"]), (1, ["d", "e", "f"])] {
            t.set_owner(owner_of(partition));
            for k in keys {
                slots.insert(k, t.slot(0, k).0);
            }
        }
        // "c" moves to partition 1, "d" to partition 0.
        t.set_owner(owner_of(1));
        t.slot(0, "c");
        t.set_owner(owner_of(0));
        t.slot(0, "d");
        assert_eq!(t.release(&[owner_of(1)]), 3);
        assert_eq!(t.len(), 3);
        for k in ["a", "b", "d"] {
            assert_eq!(t.lookup(0, k), Some(slots[k]), "{k} kept");
        }
        for k in ["c", "e", "f"] {
            assert_eq!(t.lookup(0, k), None, "{k} released");
        }
        // The freed slots serve new keys, fresh, with no eviction.
        let freed: std::collections::HashSet<u32> =
            ["c", "e", "f"].iter().map(|k| slots[k]).collect();
        let (slot, fresh) = t.slot(0, "e");
        assert!(fresh && freed.contains(&slot));
        for k in ["x", "y"] {
            let (slot, fresh) = t.slot(0, k);
            assert!(fresh && freed.contains(&slot), "{k}");
        }
        assert_eq!(t.evictions(), 0);
        assert_eq!((t.len(), t.allocated()), (6, 6));
        // Full again: the next new key evicts.
        assert!(t.slot(0, "z").1);
        assert_eq!(t.evictions(), 1);
        assert_eq!(t.release(&[owner_of(7)]), 0);
    }

    /// Slots stay unique to their keys through growth and many evictions,
    /// and every key that holds a slot is found again.
    #[test]
    fn many_keys_keep_distinct_slots_through_growth_and_eviction() {
        let capacity = 1000;
        let mut t = SlotTable::new(capacity);
        let mut owner: Vec<Option<String>> = vec![None; capacity];
        for i in 0..20_000u32 {
            // Some keys come back often, most once.
            let key = if i % 3 == 0 {
                format!("hot{}", i % 50)
            } else {
                format!("k{i}")
            };
            let (slot, fresh) = t.slot(i % 2, &key);
            let slot = slot as usize;
            assert!(slot < capacity);
            let named = format!("{}/{key}", i % 2);
            if fresh {
                owner[slot] = Some(named);
            } else {
                assert_eq!(owner[slot].as_deref(), Some(named.as_str()), "key {i}");
            }
            assert!(t.len() <= capacity);
        }
        assert_eq!(t.len(), capacity);
        assert_eq!(t.fill(), 1.0);
        assert_eq!(t.allocated(), capacity);
        // Every slot's current owner is still found, at that slot.
        for (slot, name) in owner.iter().enumerate() {
            let name = name.as_deref().expect("every slot was handed out");
            let (namespace, key) = name.split_once('/').unwrap();
            assert_eq!(
                t.lookup(namespace.parse().unwrap(), key),
                Some(slot as u32),
                "{name}"
            );
        }
        assert!(t.evictions() > 10_000);
    }
}
