//! Models that keep learning: an isolation forest whose oldest trees are
//! regrown from a bounded window of the stream's recent feature rows.
//!
//! The schedule counts rows, not batches or seconds: every `interval` rows
//! the `trees_per_update` oldest trees are replaced by trees grown from the
//! window, each from a ChaCha stream of (seed, update number, tree slot). So
//! a given seed and stream give the same forests however the stream is cut
//! into batches, and a replay, `isoflow score --learn` and the service score
//! each record alike. A row is added to the window only after it is scored:
//! the forest that scores row i has seen rows before i only.

use crate::forest::PackedForest;
use crate::grow;
use crate::model::pb;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Default rows kept for regrowing trees.
pub const DEFAULT_WINDOW: usize = 4096;
/// Default rows between updates.
pub const DEFAULT_INTERVAL: usize = 256;
/// Default rows a cold start waits for before its first forest.
pub const DEFAULT_WARMUP: usize = 256;
/// The largest window a model may ask for (rows; with 64 features, 256 MB).
pub const MAX_WINDOW: usize = 1_000_000;

/// How an online forest learns, with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct LearnSettings {
    /// Rows kept.
    pub window: usize,
    /// Rows between updates.
    pub interval: usize,
    /// Trees regrown per update.
    pub trees_per_update: usize,
    /// Rows before a cold start's first forest.
    pub warmup: usize,
    /// Trees in the forest.
    pub trees: usize,
    /// ψ: rows drawn per tree.
    pub sample_size: usize,
    /// Seed of the regrown trees.
    pub seed: u64,
}

impl LearnSettings {
    /// The settings of `learning` (defaults where a field is 0) for a forest
    /// of `trees` trees of ψ = `sample_size`.
    pub fn new(
        learning: Option<&pb::Learning>,
        trees: usize,
        sample_size: usize,
        seed: u64,
    ) -> Self {
        let l = learning.copied().unwrap_or_default();
        let or = |v: u32, d: usize| if v == 0 { d } else { v as usize };
        let trees = trees.max(1);
        Self {
            window: or(l.window, DEFAULT_WINDOW).min(MAX_WINDOW),
            interval: or(l.interval, DEFAULT_INTERVAL),
            trees_per_update: or(l.trees_per_update, trees).min(trees),
            warmup: or(l.warmup, DEFAULT_WARMUP).max(2),
            trees,
            sample_size: sample_size.max(2),
            seed,
        }
    }
}

/// An isolation forest that keeps learning from the rows it scores.
#[derive(Debug)]
pub struct OnlineForest {
    settings: LearnSettings,
    dims: usize,
    /// Ring of the last `window` rows, row-major.
    window: Vec<f32>,
    /// Rows held in the ring.
    held: usize,
    /// Next ring position to write.
    head: usize,
    /// Rows learnt so far.
    seen: u64,
    /// Updates so far (part of each regrown tree's seed).
    updates: u64,
    /// Tree slot regrown next (the oldest).
    oldest: usize,
    trees: Vec<pb::Tree>,
    packed: Option<PackedForest>,
    sample_size: u32,
}

impl OnlineForest {
    /// A forest of `dims` features starting from `initial` (a trained
    /// model's forest), or cold: no forest until `warmup` rows are in.
    pub fn new(settings: LearnSettings, dims: usize, initial: Option<&pb::Forest>) -> Self {
        let (trees, sample_size) = match initial {
            Some(f) => (f.trees.clone(), f.sample_size),
            None => (Vec::new(), 0),
        };
        let mut me = Self {
            window: Vec::with_capacity(settings.window.min(1 << 16) * dims),
            settings,
            dims,
            held: 0,
            head: 0,
            seen: 0,
            updates: 0,
            oldest: 0,
            trees,
            packed: None,
            sample_size,
        };
        if !me.trees.is_empty() {
            me.repack();
        }
        me
    }

    /// The forest that scores the next row, `None` while a cold start warms up.
    pub fn forest(&self) -> Option<&PackedForest> {
        self.packed.as_ref()
    }

    /// Updates done so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Rows the current forest scores before the next update changes it.
    pub fn rows_until_update(&self) -> usize {
        let next = if self.packed.is_none() {
            self.settings.warmup as u64
        } else {
            (self.seen / self.settings.interval as u64 + 1) * self.settings.interval as u64
        };
        (next.saturating_sub(self.seen) as usize).max(1)
    }

    /// The model-file form of the current forest (`None` while warming up).
    pub fn to_forest(&self) -> Option<pb::Forest> {
        self.packed.as_ref().map(|_| pb::Forest {
            sample_size: self.sample_size,
            trees: self.trees.clone(),
        })
    }

    /// Adds scored rows (row-major) to the window, updating the forest at
    /// each point of the schedule that they reach. Give at most
    /// [`Self::rows_until_update`] rows at a time for rows after an update
    /// to be scored by the updated forest.
    pub fn learn(&mut self, rows: &[f32]) {
        let dims = self.dims;
        for row in rows.chunks_exact(dims) {
            if self.held < self.settings.window {
                self.window.extend_from_slice(row);
                self.held += 1;
            } else {
                self.window[self.head * dims..(self.head + 1) * dims].copy_from_slice(row);
            }
            self.head = (self.head + 1) % self.settings.window;
            self.seen += 1;
            if self.packed.is_none() {
                if self.seen >= self.settings.warmup as u64 {
                    self.regrow(self.settings.trees);
                }
            } else if self.seen.is_multiple_of(self.settings.interval as u64) {
                self.regrow(self.settings.trees_per_update);
            }
        }
    }

    /// Regrows `count` trees from the window, oldest first (a cold start
    /// grows the whole forest).
    fn regrow(&mut self, count: usize) {
        // Every tree of a forest is grown from the same ψ, which sets the
        // normaliser c(ψ) of the forest's score: a cold start takes the rows
        // it has (up to the settings' ψ), later trees keep it, and a
        // regrowth of the whole forest takes the settings' ψ once the window
        // holds that many.
        if self.trees.is_empty() || count >= self.settings.trees {
            self.sample_size = self.settings.sample_size.min(self.held) as u32;
        }
        let psi = (self.sample_size as usize).min(self.held);
        let depth = grow::max_depth(psi);
        let update_seed = grow::tree_seed(self.settings.seed, self.updates);
        for _ in 0..count {
            let slot = if self.trees.len() < self.settings.trees {
                self.trees.len()
            } else {
                let s = self.oldest;
                self.oldest = (self.oldest + 1) % self.trees.len();
                s
            };
            let mut rng = ChaCha8Rng::seed_from_u64(grow::tree_seed(update_seed, slot as u64));
            let tree = grow::grow_tree(&self.window, self.held, self.dims, psi, depth, &mut rng);
            if slot == self.trees.len() {
                self.trees.push(tree);
            } else {
                self.trees[slot] = tree;
            }
        }
        self.updates += 1;
        self.repack();
    }

    fn repack(&mut self) {
        let forest = pb::Forest {
            sample_size: self.sample_size,
            trees: std::mem::take(&mut self.trees),
        };
        self.packed = Some(PackedForest::pack(&forest, self.dims));
        self.trees = forest.trees;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::{cpu::CpuScorer, RowScore, Scorer};

    fn settings(seed: u64) -> LearnSettings {
        LearnSettings {
            window: 512,
            interval: 64,
            trees_per_update: 5,
            warmup: 128,
            trees: 20,
            sample_size: 64,
            seed,
        }
    }

    /// Rows of noise around a level that moves from 0 to 10 halfway.
    fn stream(n: usize) -> Vec<f32> {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        (0..n)
            .flat_map(|i| {
                let level = if i < n / 2 { 0.0 } else { 10.0 };
                [level + rng.gen::<f32>(), rng.gen::<f32>()]
            })
            .collect()
    }

    fn score(f: &OnlineForest, row: &[f32]) -> f32 {
        let mut out = [RowScore::default()];
        CpuScorer::new(f.forest().unwrap().clone())
            .score(row, &mut out)
            .unwrap();
        out[0].score
    }

    #[test]
    fn cold_start_waits_then_follows_a_level_shift() {
        let rows = stream(2000);
        let mut f = OnlineForest::new(settings(1), 2, None);
        assert!(f.forest().is_none());
        assert_eq!(f.rows_until_update(), 128);
        f.learn(&rows[..127 * 2]);
        assert!(f.forest().is_none());
        f.learn(&rows[127 * 2..128 * 2]);
        assert_eq!(f.forest().unwrap().trees(), 20);
        f.learn(&rows[128 * 2..1000 * 2]);
        let new_level = [10.5f32, 0.5];
        let surprised = score(&f, &new_level);
        f.learn(&rows[1000 * 2..]);
        let used = score(&f, &new_level);
        assert!(used < surprised - 0.05, "{surprised} -> {used}");
    }

    #[test]
    fn same_seed_and_stream_give_the_same_forest_however_batched() {
        let rows = stream(1500);
        let mut a = OnlineForest::new(settings(7), 2, None);
        a.learn(&rows);
        let mut b = OnlineForest::new(settings(7), 2, None);
        for chunk in rows.chunks(2 * 37) {
            b.learn(chunk);
        }
        assert_eq!(a.to_forest(), b.to_forest());
        assert_eq!(a.updates(), b.updates());
        let mut c = OnlineForest::new(settings(8), 2, None);
        c.learn(&rows);
        assert_ne!(a.to_forest(), c.to_forest());
    }

    #[test]
    fn updates_replace_the_oldest_trees_on_schedule() {
        let rows = stream(128 + 64 * 3);
        let mut f = OnlineForest::new(settings(3), 2, None);
        f.learn(&rows[..128 * 2]);
        let first = f.to_forest().unwrap();
        assert_eq!(f.rows_until_update(), 64);
        f.learn(&rows[128 * 2..]);
        let later = f.to_forest().unwrap();
        assert_eq!(f.updates(), 4);
        // Three updates of five trees: slots 0..15 regrown, 15..20 kept.
        for (i, (a, b)) in first.trees.iter().zip(&later.trees).enumerate() {
            assert_eq!(a == b, i >= 15, "tree {i}");
        }
    }
}
