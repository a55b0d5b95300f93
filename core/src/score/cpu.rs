//! The CPU scorer: the GPU kernel's twin, parallel over rows on all cores.

use super::{check_shape, RowScore, ScoreError, Scorer};
use crate::forest::{
    normalize_shares, score_from_mean_path, ImplicitForest, PackedForest, IMPLICIT_MAX_DEPTH,
};
use rayon::prelude::*;
use std::cmp::Ordering::{Equal, Less};

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Rows per work item. Within a block the trees are the outer loop so each
/// tree's nodes stay in cache while every row of the block walks it.
const BLOCK_ROWS: usize = 256;

/// Fewer rows than this are scored on the calling thread. Handing a batch
/// to the pool costs wake-ups and a cold cache on the other cores for a few
/// milliseconds of work at most, while those cores are busy with the rest of
/// the service (fetching, parsing): a streaming batch (4096 records by
/// default) scored where its features were just computed costs the pipeline
/// 2–4% less CPU per record, end to end.
const PARALLEL_MIN_ROWS: usize = 16_384;

/// Rows walked through one tree in lockstep. Their loads are independent,
/// so the CPU overlaps them instead of waiting on each dependent load of a
/// single walk.
const LANES: usize = 8;

/// The CPU layout of a packed forest.
#[derive(Clone, Debug)]
enum Layout {
    /// Complete trees with implicit children (depth ≤ [`IMPLICIT_MAX_DEPTH`]).
    Implicit(ImplicitForest),
    /// The packed nodes themselves, for deeper forests.
    Linked,
}

#[derive(Clone, Debug)]
struct CpuForest {
    packed: PackedForest,
    layout: Layout,
    /// The same trees for the AVX-512 walk, when this CPU and forest allow.
    #[cfg(target_arch = "x86_64")]
    simd: Option<avx512::Tables>,
}

impl CpuForest {
    fn new(packed: PackedForest, vector: bool) -> Self {
        let layout = if packed.max_depth > IMPLICIT_MAX_DEPTH {
            Layout::Linked
        } else {
            Layout::Implicit(ImplicitForest::new(&packed))
        };
        #[cfg(target_arch = "x86_64")]
        let simd = match &layout {
            Layout::Implicit(implicit)
                if vector
                    && avx512::available()
                    && packed.max_depth <= avx512::MAX_DEPTH
                    && packed.dims <= avx512::MAX_DIMS =>
            {
                Some(avx512::Tables::new(packed.dims, implicit))
            }
            _ => None,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = vector;
        Self {
            packed,
            layout,
            #[cfg(target_arch = "x86_64")]
            simd,
        }
    }

    /// Whether blocks take the AVX-512 walk.
    fn vector(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.simd.is_some();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Adds each row's path length in every tree to `sums`, on the fastest
    /// walk available.
    fn accumulate_block(&self, rows: &[f32], sums: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(tables) = &self.simd {
            return tables.accumulate::<BLOCK_ROWS>(rows, sums);
        }
        self.accumulate(rows, sums)
    }

    /// Each row's attribution credit per feature
    /// ([`PackedForest::credit_rows`]), on the fastest walk available.
    fn credit(&self, rows: &[f32]) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if let Some(tables) = &self.simd {
            let width = BLOCK_ROWS * self.packed.dims.max(1);
            let mut credit = vec![0f32; rows.len()];
            for (rows, credit) in rows.chunks(width).zip(credit.chunks_mut(width)) {
                tables.credit::<BLOCK_ROWS>(rows, credit);
            }
            return credit;
        }
        self.packed.credit_rows(rows)
    }

    /// Adds each row's path length in every tree, in tree order, to `sums`.
    fn accumulate(&self, rows: &[f32], sums: &mut [f32]) {
        let dims = self.packed.dims;
        match &self.layout {
            Layout::Linked => {
                for &root in &self.packed.roots {
                    for (sum, row) in sums.iter_mut().zip(rows.chunks_exact(dims)) {
                        *sum += self.packed.path_length(root, row);
                    }
                }
            }
            Layout::Implicit(implicit) => {
                for (splits, leaves, depth) in implicit.iter() {
                    let walk = |pos: usize, row: &[f32]| {
                        // SAFETY: `pos` stays below `splits.len()` for the
                        // `depth` steps a walk takes (complete tree), and
                        // split features come from a validated forest, so
                        // they index inside a `dims`-wide row.
                        let s = unsafe { *splits.get_unchecked(pos) };
                        let x = unsafe { *row.get_unchecked(s.feature as usize) };
                        // `x <= threshold` goes left, anything else (greater,
                        // or NaN) right, exactly as the GPU kernel branches.
                        let right = !matches!(x.partial_cmp(&s.threshold), Some(Less | Equal));
                        2 * pos + 1 + right as usize
                    };
                    let mut groups = rows.chunks_exact(LANES * dims);
                    let mut group_sums = sums.chunks_exact_mut(LANES);
                    for (group, gsums) in (&mut groups).zip(&mut group_sums) {
                        let mut pos = [0usize; LANES];
                        for _ in 0..depth {
                            for (k, p) in pos.iter_mut().enumerate() {
                                *p = walk(*p, &group[k * dims..(k + 1) * dims]);
                            }
                        }
                        for (sum, &p) in gsums.iter_mut().zip(&pos) {
                            *sum += leaves[p - splits.len()];
                        }
                    }
                    for (row, sum) in groups
                        .remainder()
                        .chunks_exact(dims)
                        .zip(group_sums.into_remainder())
                    {
                        let mut p = 0;
                        for _ in 0..depth {
                            p = walk(p, row);
                        }
                        *sum += leaves[p - splits.len()];
                    }
                }
            }
        }
    }

    fn score_block(&self, rows: &[f32], out: &mut [RowScore]) {
        let dims = self.packed.dims;
        let mut sums = [0f32; BLOCK_ROWS];
        for (rows, out) in rows
            .chunks(BLOCK_ROWS * dims)
            .zip(out.chunks_mut(BLOCK_ROWS))
        {
            let sums = &mut sums[..out.len()];
            sums.fill(0.0);
            self.accumulate_block(rows, sums);
            let trees = self.packed.trees() as f32;
            for (o, &sum) in out.iter_mut().zip(sums.iter()) {
                let mean_path = sum / trees;
                *o = RowScore {
                    score: score_from_mean_path(mean_path, self.packed.normaliser),
                    mean_path,
                };
            }
        }
    }
}

/// Scores on all CPU cores with rayon (a small batch on the calling
/// thread). Allocates nothing per row.
///
/// Same arithmetic as `shaders/iforest.wgsl` (per row, leaf path lengths
/// summed in tree order in f32, one division, one `exp2`), so the two agree
/// to rounding of `exp2`.
#[derive(Clone, Debug)]
pub struct CpuScorer {
    forest: CpuForest,
}

impl CpuScorer {
    /// A scorer for a packed (hence validated) forest, on the AVX-512 walk
    /// where the CPU has it and the trees fit (depth ≤ 8, ≤ 16 features:
    /// the default ψ = 256 does), else on the portable walk.
    pub fn new(forest: PackedForest) -> Self {
        Self {
            forest: CpuForest::new(forest, true),
        }
    }

    /// A scorer that always takes the portable walk (the reference the
    /// vector walk is tested against).
    pub fn portable(forest: PackedForest) -> Self {
        Self {
            forest: CpuForest::new(forest, false),
        }
    }
}

impl Scorer for CpuScorer {
    fn describe(&self) -> String {
        let walk = if self.forest.vector() { ", avx512" } else { "" };
        format!("cpu ({} threads{walk})", rayon::current_num_threads())
    }

    fn dims(&self) -> usize {
        self.forest.packed.dims
    }

    fn score(&mut self, rows: &[f32], out: &mut [RowScore]) -> Result<(), ScoreError> {
        check_shape(self.forest.packed.dims, rows, out)?;
        let dims = self.forest.packed.dims;
        let forest = &self.forest;
        if out.len() < PARALLEL_MIN_ROWS {
            forest.score_block(rows, out);
            return Ok(());
        }
        rows.par_chunks(BLOCK_ROWS * dims)
            .zip(out.par_chunks_mut(BLOCK_ROWS))
            .for_each(|(rows, out)| forest.score_block(rows, out));
        Ok(())
    }
}

/// Per-feature shares of alerting rows (the method of
/// [`PackedForest::attribution`]) on the AVX-512 walk where the CPU and
/// forest allow: sixteen rows per walk and no branches to mispredict, about
/// a sixth of the branching walk's time per row. Either way the shares are
/// those of [`PackedForest::attribution_rows`], bit for bit.
#[derive(Clone, Debug)]
pub struct Attribution {
    forest: CpuForest,
}

impl Attribution {
    /// Attribution of `forest`'s rows, on the fastest walk available.
    pub fn new(forest: PackedForest) -> Self {
        Self {
            forest: CpuForest::new(forest, true),
        }
    }

    /// The branching walk only (the reference the vector walk must match).
    pub fn portable(forest: PackedForest) -> Self {
        Self {
            forest: CpuForest::new(forest, false),
        }
    }

    /// Whether rows take the AVX-512 walk.
    pub fn vector(&self) -> bool {
        self.forest.vector()
    }

    /// The forest whose rows it attributes.
    pub fn forest(&self) -> &PackedForest {
        &self.forest.packed
    }

    /// Shares of each row of `rows` (rows of the forest's width, one after
    /// another), as rows in the same layout, each summing to 1.
    pub fn rows(&self, rows: &[f32]) -> Vec<f32> {
        let mut credit = self.forest.credit(rows);
        normalize_shares(&mut credit, self.forest.packed.dims);
        credit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::spec::fields_spec;
    use crate::forest::average_path_length;
    use crate::model::pb;

    /// Two hand-built trees over features (a, b), ψ = 8.
    /// Tree 0: a <= 0.5 → leaf(4) at depth 1; else b <= 2 → leaf(1) / leaf(3) at depth 2.
    /// Tree 1: b <= 1 → leaf(2) at depth 1; else leaf(6) at depth 1.
    fn model() -> pb::Model {
        pb::Model {
            feature_spec: Some(fields_spec(&["a".into(), "b".into()])),
            forest: Some(pb::Forest {
                sample_size: 8,
                trees: vec![
                    pb::Tree {
                        feature: vec![0, 0, 1, 0, 0],
                        threshold: vec![0.5, 0.0, 2.0, 0.0, 0.0],
                        left: vec![1, 0, 3, 0, 0],
                        right: vec![2, 0, 4, 0, 0],
                        leaf_size: vec![0, 4, 0, 1, 3],
                    },
                    pb::Tree {
                        feature: vec![1, 0, 0],
                        threshold: vec![1.0, 0.0, 0.0],
                        left: vec![1, 0, 0],
                        right: vec![2, 0, 0],
                        leaf_size: vec![0, 2, 6],
                    },
                ],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn scores_agree_with_hand_computation() {
        let forest = PackedForest::from_model(&model()).unwrap();
        let c = average_path_length;
        let rows = [0.0f32, 0.0, 1.0, 1.5, 1.0, 5.0];
        // Row (0,0): tree0 → leaf(4) depth 1; tree1 → leaf(2) depth 1.
        // Row (1,1.5): tree0 → b<=2 → leaf(1) depth 2; tree1 → leaf(6) depth 1.
        // Row (1,5): tree0 → leaf(3) depth 2; tree1 → leaf(6) depth 1.
        let paths = [
            ((1.0 + c(4.0)) + (1.0 + c(2.0))) / 2.0,
            ((2.0 + c(1.0)) + (1.0 + c(6.0))) / 2.0,
            ((2.0 + c(3.0)) + (1.0 + c(6.0))) / 2.0,
        ];
        let mut out = vec![RowScore::default(); 3];
        CpuScorer::new(forest).score(&rows, &mut out).unwrap();
        for (o, &p) in out.iter().zip(&paths) {
            let want = 2f64.powf(-p / c(8.0));
            assert!((o.mean_path as f64 - p).abs() < 1e-6, "{o:?} vs path {p}");
            assert!(
                (o.score as f64 - want).abs() < 1e-6,
                "{o:?} vs score {want}"
            );
        }
    }

    /// A random tree of depth ≤ `max_depth` over `dims` features, with
    /// thresholds on a quarter grid so rows hit them exactly.
    fn random_tree(rng: &mut u64, dims: usize, max_depth: u32) -> pb::Tree {
        let mut next = move || {
            *rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*rng >> 33) as u32
        };
        let mut tree = pb::Tree::default();
        let mut stack = vec![(0usize, 0u32)];
        tree.push_node(0, 0.0, 0);
        while let Some((i, depth)) = stack.pop() {
            if depth == max_depth || (depth > 0 && next() % 5 == 0) {
                tree.leaf_size[i] = 1 + next() % 20;
                continue;
            }
            let l = tree.feature.len();
            tree.push_node(0, 0.0, 0);
            tree.push_node(0, 0.0, 0);
            tree.feature[i] = next() % dims as u32;
            tree.threshold[i] = (next() % 16) as f32 * 0.25;
            tree.left[i] = l as u32;
            tree.right[i] = l as u32 + 1;
            stack.push((l, depth + 1));
            stack.push((l + 1, depth + 1));
        }
        tree
    }

    #[test]
    fn vector_walk_matches_portable_walk_bit_for_bit() {
        for (dims, max_depth, forest, rows) in random_forests() {
            let n = rows.len() / dims;
            let mut fast = CpuScorer::new(forest.clone());
            if dims <= 16 && max_depth <= 8 && std::arch::is_x86_feature_detected!("avx512f") {
                assert!(fast.describe().contains("avx512"), "{}", fast.describe());
            }
            let (mut a, mut b) = (vec![RowScore::default(); n], vec![RowScore::default(); n]);
            fast.score(&rows, &mut a).unwrap();
            CpuScorer::portable(forest).score(&rows, &mut b).unwrap();
            for (row, (a, b)) in a.iter().zip(&b).enumerate() {
                assert_eq!(
                    (a.score.to_bits(), a.mean_path.to_bits()),
                    (b.score.to_bits(), b.mean_path.to_bits()),
                    "dims {dims} depth {max_depth} row {row}: {a:?} vs {b:?}"
                );
            }
        }
    }

    /// Forests of 25 random trees (leaves at every depth, so complete trees
    /// carry padding) for each width and depth the walks treat apart, with
    /// rows on their threshold grid and a NaN now and then: (dims, max
    /// depth, forest, rows).
    fn random_forests() -> Vec<(usize, u32, PackedForest, Vec<f32>)> {
        let mut rng = 7u64;
        let mut out = Vec::new();
        for dims in [1usize, 3, 8, 9, 16, 17] {
            for max_depth in [1u32, 4, 5, 6, 7, 8, 9] {
                let names: Vec<String> = (0..dims).map(|d| format!("f{d}")).collect();
                let model = pb::Model {
                    feature_spec: Some(fields_spec(&names)),
                    forest: Some(pb::Forest {
                        sample_size: 256,
                        trees: (0..25)
                            .map(|_| random_tree(&mut rng, dims, max_depth))
                            .collect(),
                    }),
                    ..Default::default()
                };
                let forest = PackedForest::from_model(&model).unwrap();
                // Not a multiple of the 16 lanes or the block; values on the
                // threshold grid, and a NaN, which goes right.
                let rows: Vec<f32> = (0..(700 * dims + 5 * dims))
                    .map(|i| match i % 97 {
                        13 => f32::NAN,
                        k => (k % 18) as f32 * 0.25 - 0.25,
                    })
                    .collect();
                out.push((dims, max_depth, forest, rows));
            }
        }
        out
    }

    #[test]
    fn vector_attribution_matches_the_branching_walk_bit_for_bit() {
        for (dims, max_depth, forest, rows) in random_forests() {
            let fast = Attribution::new(forest.clone());
            if dims <= 16 && max_depth <= 8 && std::arch::is_x86_feature_detected!("avx512f") {
                assert!(fast.vector(), "dims {dims} depth {max_depth}");
            }
            let (a, b) = (fast.rows(&rows), forest.attribution_rows(&rows));
            assert_eq!(a.len(), b.len());
            for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "dims {dims} depth {max_depth} row {} feature {}: {a} vs {b}",
                    i / dims,
                    i % dims
                );
            }
            let portable = Attribution::portable(forest.clone());
            assert!(!portable.vector());
            assert_eq!(
                portable.rows(&rows[..dims * 3]),
                forest.attribution_rows(&rows[..dims * 3])
            );
        }
        // Every row's shares sum to 1 (hand-built model: both features on
        // some path).
        let forest = PackedForest::from_model(&model()).unwrap();
        let shares = Attribution::new(forest).rows(&[0.0, 0.0, 1.0, 3.0]);
        for row in shares.chunks(2) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{shares:?}");
        }
    }

    /// A batch large enough to be split across the pool scores each row as
    /// it scores alone, on the calling thread.
    #[test]
    fn parallel_and_calling_thread_scores_agree() {
        let mut rng = 11u64;
        let dims = 5;
        let names: Vec<String> = (0..dims).map(|d| format!("f{d}")).collect();
        let model = pb::Model {
            feature_spec: Some(fields_spec(&names)),
            forest: Some(pb::Forest {
                sample_size: 256,
                trees: (0..20).map(|_| random_tree(&mut rng, dims, 8)).collect(),
            }),
            ..Default::default()
        };
        let mut scorer = CpuScorer::new(PackedForest::from_model(&model).unwrap());
        let n = PARALLEL_MIN_ROWS + 333;
        let rows: Vec<f32> = (0..n * dims)
            .map(|i| ((i * 7919) % 41) as f32 * 0.1 - 2.0)
            .collect();
        let mut whole = vec![RowScore::default(); n];
        scorer.score(&rows, &mut whole).unwrap();
        let mut parts = vec![RowScore::default(); n];
        for (rows, out) in rows.chunks(1000 * dims).zip(parts.chunks_mut(1000)) {
            scorer.score(rows, out).unwrap();
        }
        assert_eq!(whole, parts);
    }

    #[test]
    fn wrong_shape_is_an_error() {
        let forest = PackedForest::from_model(&model()).unwrap();
        let mut out = vec![RowScore::default(); 2];
        let err = CpuScorer::new(forest)
            .score(&[1.0, 2.0, 3.0], &mut out)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("not a whole number of 2-feature rows"),
            "{err}"
        );
    }
}
