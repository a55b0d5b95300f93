//! Seeded randomness for benches and tests: a SplitMix64 generator and a
//! random but valid isolation forest, so neither needs `rand` or a training
//! run, and a seed reproduces them.

use crate::model::pb;

/// A valid synthetic model: `trees` isolation trees, each grown on ψ =
/// `sample_size` uniform points in [0, 1)^dims with random splits until a
/// point is isolated or the depth reaches ⌈log₂ ψ⌉.
pub fn random_model(dims: usize, trees: usize, sample_size: usize, seed: u64) -> pb::Model {
    let mut rng = SplitMix64::new(seed);
    let depth_limit = (sample_size.max(2) as f64).log2().ceil() as usize;
    let names: Vec<String> = (0..dims).map(|i| format!("f{i}")).collect();
    let trees = (0..trees)
        .map(|_| {
            let sample: Vec<f32> = (0..sample_size * dims).map(|_| rng.unit()).collect();
            grow_tree(&mut rng, &sample, dims, depth_limit)
        })
        .collect();
    pb::Model {
        name: "bench".into(),
        version: 1,
        feature_spec: Some(crate::features::spec::fields_spec(&names)),
        forest: Some(pb::Forest {
            sample_size: sample_size as u32,
            trees,
        }),
        threshold: 0.6,
        ..Default::default()
    }
}

fn grow_tree(rng: &mut SplitMix64, sample: &[f32], dims: usize, depth_limit: usize) -> pb::Tree {
    let mut tree = pb::Tree::default();
    tree.push_node(0, 0.0, 0);
    // (node, depth, indices of the sample rows that reach it)
    let mut stack = vec![(0usize, 0usize, (0..sample.len() / dims).collect::<Vec<_>>())];
    while let Some((node, depth, points)) = stack.pop() {
        let feature = rng.below(dims);
        let value = |p: usize| sample[p * dims + feature];
        let (lo, hi) = points.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &p| {
            (lo.min(value(p)), hi.max(value(p)))
        });
        if points.len() <= 1 || depth >= depth_limit || lo >= hi {
            tree.leaf_size[node] = points.len().max(1) as u32;
            continue;
        }
        let mut threshold = lo + rng.unit() * (hi - lo);
        if threshold >= hi {
            threshold = lo;
        }
        let (left_points, right_points): (Vec<usize>, Vec<usize>) =
            points.iter().partition(|&&p| value(p) <= threshold);
        let (left, right) = (tree.push_node(0, 0.0, 0), tree.push_node(0, 0.0, 0));
        tree.feature[node] = feature as u32;
        tree.threshold[node] = threshold;
        tree.left[node] = left as u32;
        tree.right[node] = right as u32;
        stack.push((left, depth + 1, left_points));
        stack.push((right, depth + 1, right_points));
    }
    tree
}

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast and good enough for
/// synthetic data; not for anything security-related.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose whole state is `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 random bits (every value exact in f32).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in 0..n (n ≥ 1); the modulo bias is negligible for bench sizes.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forest::PackedForest;

    #[test]
    fn random_model_is_valid_and_bounded() {
        let model = random_model(5, 8, 256, 3);
        let forest = PackedForest::from_model(&model).expect("valid");
        assert_eq!(forest.trees(), 8);
        assert!(forest.max_depth <= 8 && forest.max_depth >= 4);
    }
}
