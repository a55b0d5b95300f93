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

    /// Draws features without replacement until one is not constant on
    /// `idx` (constant draws do not count, as in scikit-learn's splitter).
    fn pick_split(&mut self, idx: &[u32], rng: &mut ChaCha8Rng) -> Option<(usize, f32)> {
        for k in 0..self.dims {
            let j = rng.gen_range(k..self.dims);
            self.features.swap(k, j);
            let f = self.features[k];
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for &r in idx {
                let x = self.value(r, f);
                lo = lo.min(x);
                hi = hi.max(x);
            }
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
        let mut mid = 0;
        for i in 0..idx.len() {
            if self.value(idx[i], feature) <= threshold {
                idx.swap(i, mid);
                mid += 1;
            }
        }
        let (left, right) = idx.split_at_mut(mid);
        let l = self.build(left, depth + 1, rng);
        let r = self.build(right, depth + 1, rng);
        self.tree.left[node] = l as u32;
        self.tree.right[node] = r as u32;
        node
    }
}
