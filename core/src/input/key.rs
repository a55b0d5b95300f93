//! Key hashing, with the key column that holds the hashes: 128 bits of two
//! independently, randomly seeded hashes of a key's text, computed once per
//! record and used by every keyed feature.

/// The hash of a key's text, before its namespace is mixed in: computed
/// once per distinct key of a batch, it serves every feature keyed by it.
pub type KeyHash = u128;

/// Seeds of [`key_hash`], one pair per process.
static SEEDS: std::sync::LazyLock<[foldhash::fast::RandomState; 2]> =
    std::sync::LazyLock::new(Default::default);

/// The hash of `key` that per-key state tables are looked up with.
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
