//! Isolation-tree growth (Liu, Ting & Zhou 2008, as in scikit-learn): the
//! one implementation that the offline trainer and the online forest
//! ([`crate::learn`]) both grow trees with.
//!
//! A tree draws ψ rows without replacement, then splits recursively on a
//! random non-constant feature at a uniform threshold between the node's min
//! and max, up to depth ⌈log₂ ψ⌉. Each tree has its own ChaCha stream derived
//! from (seed, tree index), so a seed gives the same forest on any number of
//! threads. Thresholds are stored as the largest f32 not above the drawn f64
//! value, so `x <= threshold` in f32 sends every f32 input the same way the
//! f64 comparison would.

use crate::model::pb;
use rand::seq::index;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The depth limit of a tree grown from ψ rows: ⌈log₂ ψ⌉.
pub fn max_depth(psi: usize) -> usize {
    (psi.max(2) as f64).log2().ceil() as usize
}

/// SplitMix64 of (seed, tree): decorrelated per-tree streams.
pub fn tree_seed(seed: u64, tree: u64) -> u64 {
    let mut z = seed ^ tree.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct TreeBuilder<'a> {
    sample: &'a [f32],
    dims: usize,
    max_depth: usize,
    tree: pb::Tree,
    features: Vec<usize>,
}

/// Grows one tree from `psi` rows drawn from the row-major `data`
/// (`rows × dims`), at most `max_depth` deep.
pub fn grow_tree(
    data: &[f32],
    rows: usize,
    dims: usize,
    psi: usize,
    max_depth: usize,
    rng: &mut ChaCha8Rng,
) -> pb::Tree {
    let picked = index::sample(rng, rows, psi);
    let mut sample = Vec::with_capacity(psi * dims);
    for r in picked.iter() {
        sample.extend_from_slice(&data[r * dims..(r + 1) * dims]);
    }
    let mut builder = TreeBuilder {
        sample: &sample,
        dims,
        max_depth,
        tree: pb::Tree::default(),
        features: (0..dims).collect(),
    };
    let mut idx: Vec<u32> = (0..psi as u32).collect();
    builder.build(&mut idx, 0, rng);
    builder.tree
}

impl TreeBuilder<'_> {
    fn value(&self, row: u32, feature: usize) -> f32 {
        self.sample[row as usize * self.dims + feature]
    }

    /// The least and greatest value of `feature` over `idx` (NaNs passed
    /// over, as `f32::min`/`max` do). Four running pairs instead of one:
    /// the scan is most of a tree's growth, and a single pair makes every
    /// step wait for the one before.
    fn range(&self, idx: &[u32], feature: usize) -> (f32, f32) {
        let mut lo = [f32::INFINITY; 4];
        let mut hi = [f32::NEG_INFINITY; 4];
        let mut quads = idx.chunks_exact(4);
        for quad in &mut quads {
            for lane in 0..4 {
                let x = self.value(quad[lane], feature);
                lo[lane] = lo[lane].min(x);
                hi[lane] = hi[lane].max(x);
            }
        }
        for (lane, &r) in quads.remainder().iter().enumerate() {
            let x = self.value(r, feature);
            lo[lane] = lo[lane].min(x);
            hi[lane] = hi[lane].max(x);
        }
        (
            lo[0].min(lo[1]).min(lo[2].min(lo[3])),
            hi[0].max(hi[1]).max(hi[2].max(hi[3])),
        )
    }

    /// Draws features without replacement until one is not constant on
    /// `idx` (constant draws do not count, as in scikit-learn's splitter).
    fn pick_split(&mut self, idx: &[u32], rng: &mut ChaCha8Rng) -> Option<(usize, f32)> {
        for k in 0..self.dims {
            let j = rng.gen_range(k..self.dims);
            self.features.swap(k, j);
            let f = self.features[k];
            let (lo, hi) = self.range(idx, f);
            if hi > lo {
                let (lo64, hi64) = (lo as f64, hi as f64);
                let mut t = lo64 + rng.gen::<f64>() * (hi64 - lo64);
                if t >= hi64 {
                    t = lo64;
                }
                let mut t32 = t as f32;
                if t32 as f64 > t {
                    t32 = t32.next_down();
                }
                return Some((f, t32));
            }
        }
        None
    }

    fn build(&mut self, idx: &mut [u32], depth: usize, rng: &mut ChaCha8Rng) -> usize {
        let split = if idx.len() <= 1 || depth >= self.max_depth {
            None
        } else {
            self.pick_split(idx, rng)
        };
        let Some((feature, threshold)) = split else {
            return self.tree.push_node(0, 0.0, idx.len() as u32);
        };
        let node = self.tree.push_node(feature as u32, threshold, 0);
        // Lomuto's partition without a branch: whether a row goes left is
        // a coin toss to the predictor, and the masked moves do exactly what
        // the swap `if left { idx.swap(i, mid) }` would, so the tree is the
        // same.
        let mut mid = 0;
        for i in 0..idx.len() {
            let (at_mid, at_i) = (idx[mid], idx[i]);
            let left = self.value(at_i, feature) <= threshold;
            // All ones to go left, all zeros to stay: masks, which the
            // compiler keeps branchless where it turns an `if` back into a
            // jump.
            let mask = (left as u32).wrapping_neg();
            idx[i] = (at_mid & mask) | (at_i & !mask);
            idx[mid] = (at_i & mask) | (at_mid & !mask);
            mid += left as usize;
        }
        let (left, right) = idx.split_at_mut(mid);
        let l = self.build(left, depth + 1, rng);
        let r = self.build(right, depth + 1, rng);
        self.tree.left[node] = l as u32;
        self.tree.right[node] = r as u32;
        node
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// FNV-1a over every array of the tree: any change of shape, split or
    /// leaf size changes it.
    fn fingerprint(tree: &pb::Tree) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let words = tree
            .feature
            .iter()
            .chain(&tree.left)
            .chain(&tree.right)
            .chain(&tree.leaf_size)
            .copied()
            .chain(tree.threshold.iter().map(|t| t.to_bits()));
        for w in words {
            for b in w.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
        }
        h
    }

    #[test]
    fn trees_are_grown_as_they_always_were() {
        // Rows with a constant column, a column of few values (ties at
        // every split) and two continuous ones.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (rows, dims) = (3000, 4);
        let data: Vec<f32> = (0..rows)
            .flat_map(|i| {
                [
                    1.0,
                    (i % 7) as f32,
                    rng.gen::<f32>() * 100.0,
                    (i as f32 / 10.0).sin(),
                ]
            })
            .collect();
        let prints: Vec<u64> = (0..4)
            .map(|t| {
                let mut rng = ChaCha8Rng::seed_from_u64(tree_seed(9, t));
                fingerprint(&grow_tree(&data, rows, dims, 256, max_depth(256), &mut rng))
            })
            .collect();
        // The trees of the first implementation (a plain min/max fold and
        // a branching Lomuto partition), which every trained model and
        // every learning replay so far came from.
        assert_eq!(prints, GROWN_BEFORE, "{prints:?}");
    }

    const GROWN_BEFORE: [u64; 4] = [
        9958931483043563368,
        6907434031179841336,
        8935816092058629381,
        9245256238724121513,
    ];
}
