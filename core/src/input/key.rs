//! Key hashing, with the key column that holds the hashes: 128 bits of two
//! independently, randomly seeded hashes of a key's text, computed once per
//! record and used by every keyed feature.

/// The hash of a key's text, before its namespace is mixed in: computed
/// once per distinct key of a batch, it serves every feature keyed by it.
pub type KeyHash = u128;

/// The four numbers a process's [`key_hash`] is seeded with: the shared
/// and per-hasher seeds of its two hashes. Random per process unless
/// pinned ([`pin_key_seeds`]): per-key state written by one process (a
/// changelog) is found again by another only when both hash keys alike.
pub type KeySeeds = [u64; 4];

/// The seeds of [`key_hash`] and the hashers built from them, fixed at
/// the first hash or pin.
static SEEDS: std::sync::OnceLock<(KeySeeds, [foldhash::fast::SeedableRandomState; 2])> =
    std::sync::OnceLock::new();

fn hashers(seeds: KeySeeds) -> (KeySeeds, [foldhash::fast::SeedableRandomState; 2]) {
    let state = |shared: u64, per: u64| {
        // Built once per process: the shared seed lives as long as it.
        let shared: &'static foldhash::SharedSeed =
            Box::leak(Box::new(foldhash::SharedSeed::from_u64(shared)));
        foldhash::fast::SeedableRandomState::with_seed(per, shared)
    };
    (
        seeds,
        [state(seeds[0], seeds[1]), state(seeds[2], seeds[3])],
    )
}

/// Fresh random seeds, from the operating system's randomness (through
/// the standard library's hash keys) and foldhash's own.
pub fn random_key_seeds() -> KeySeeds {
    use std::hash::BuildHasher;
    let folded = foldhash::fast::RandomState::default();
    std::array::from_fn(|i| {
        std::collections::hash_map::RandomState::new().hash_one(i) ^ folded.hash_one(i)
    })
}

/// The seeds this process hashes keys with (chosen now, at random, if no
/// key was hashed and none pinned yet).
pub fn key_seeds() -> KeySeeds {
    SEEDS.get_or_init(|| hashers(random_key_seeds())).0
}

/// The seeds this process hashes keys with, or would if it hashed one now
/// (random, not yet fixed): what it proposes to others that must agree.
pub fn proposed_key_seeds() -> KeySeeds {
    SEEDS
        .get()
        .map_or_else(random_key_seeds, |(seeds, _)| *seeds)
}

/// Makes this process hash keys with `seeds`. Refused, with the seeds in
/// use, once a key was hashed or other seeds were pinned.
pub fn pin_key_seeds(seeds: KeySeeds) -> Result<(), KeySeeds> {
    let (current, _) = SEEDS.get_or_init(|| hashers(seeds));
    match *current == seeds {
        true => Ok(()),
        false => Err(*current),
    }
}

/// The hash of `key` that per-key state tables are looked up with.
pub fn key_hash(key: &str) -> KeyHash {
    use std::hash::BuildHasher;
    let (_, states) = SEEDS.get_or_init(|| hashers(random_key_seeds()));
    let [a, b] = states.each_ref().map(|seed| seed.hash_one(key));
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
