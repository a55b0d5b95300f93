//! Label feedback: confirmed labels that arrive after the records they
//! describe (a chargeback, an analyst's verdict), turned into per-key risk.
//!
//! A feedback record is the original record plus `label` (nonzero: a
//! confirmed anomaly) and `label_ts` (epoch seconds when the label became
//! known). Labels are applied in `label_ts` order, and a record at event
//! time t sees exactly the labels with `label_ts <= t`: no label from its
//! own future, so offline figures are what the service would have scored.

use super::slots::{KeyHash, SlotTable};

/// Field of a feedback record holding its label.
pub const LABEL_FIELD: &str = "label";
/// Field of a feedback record holding when its label became known.
pub const LABEL_TS_FIELD: &str = "label_ts";

/// One confirmed label, keyed for every risk feature.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    /// When the label became known (epoch seconds).
    pub known_at: f64,
    /// A confirmed anomaly.
    pub anomaly: bool,
    /// The record's key hash per risk feature, in feature order.
    pub keys: Vec<KeyHash>,
}

/// Labels not yet applied, in `known_at` order.
#[derive(Clone, Debug, Default)]
pub struct LabelQueue {
    labels: Vec<Label>,
    next: usize,
}

impl LabelQueue {
    /// A queue of `labels` in any order; sorted stably by `known_at`.
    pub fn new(labels: Vec<Label>) -> Self {
        let mut queue = Self::default();
        queue.extend(labels);
        queue
    }

    /// Labels queued and not yet applied.
    pub fn pending(&self) -> usize {
        self.labels.len() - self.next
    }

    /// Adds labels arriving later (a feedback topic); each must be known at
    /// or after those already applied, else it is applied at once.
    pub fn extend(&mut self, more: impl IntoIterator<Item = Label>) {
        self.labels.drain(..self.next);
        self.next = 0;
        self.labels.extend(more);
        self.labels
            .sort_by(|a, b| a.known_at.total_cmp(&b.known_at));
    }

    /// The labels known by time `t` that are not applied yet.
    pub fn due(&mut self, t: f64) -> &[Label] {
        let start = self.next;
        while self.next < self.labels.len() && self.labels[self.next].known_at <= t {
            self.next += 1;
        }
        &self.labels[start..self.next]
    }
}

/// Share of confirmed anomalies among one key's labelled records, with
/// decayed counts over event time.
#[derive(Debug)]
pub struct LabelRisk {
    window_s: f64,
    prior: f64,
    slots: SlotTable,
    /// Per slot: time of the counts, labelled (decayed), anomalies (decayed).
    state: Vec<[f64; 3]>,
}

impl LabelRisk {
    /// Risk over a decay constant of `window_s` seconds, damped by `prior`
    /// pseudo-labels of normal records; at most `capacity` keys.
    pub fn new(window_s: f64, prior: f64, capacity: usize) -> Self {
        Self {
            window_s,
            prior,
            slots: SlotTable::new(capacity),
            state: Vec::new(),
        }
    }

    /// The table this feature keeps its keys in (evictions, fill, owners).
    pub fn table(&self) -> &SlotTable {
        &self.slots
    }

    /// [`Self::table`], to set the owner of the keys looked up next or
    /// release a partition's keys.
    pub fn table_mut(&mut self) -> &mut SlotTable {
        &mut self.slots
    }

    fn cell(&mut self, key: KeyHash) -> &mut [f64; 3] {
        let (slot, fresh) = self.slots.slot_hashed(0, key);
        let i = slot as usize;
        if i >= self.state.len() {
            self.state.resize(i + 1, [0.0; 3]);
        }
        if fresh {
            self.state[i] = [f64::NEG_INFINITY, 0.0, 0.0];
        }
        &mut self.state[i]
    }

    /// Counts a label of `key` as of the time it became known: what a
    /// key's risk reflects is what was learnt about it lately.
    pub fn learn(&mut self, key: KeyHash, known_at: f64, anomaly: bool) {
        let window = self.window_s;
        let c = self.cell(key);
        let now = known_at.max(c[0]);
        if c[0].is_finite() {
            let decay = (-(now - c[0]) / window).exp();
            c[1] *= decay;
            c[2] *= decay;
        }
        c[0] = now;
        c[1] += 1.0;
        if anomaly {
            c[2] += 1.0;
        }
    }

    /// The risk of `key` at time `t`: anomalies / (labelled + prior).
    pub fn risk(&mut self, key: KeyHash, t: f64) -> f64 {
        let (window, prior) = (self.window_s, self.prior);
        let c = self.cell(key);
        if !c[0].is_finite() {
            return 0.0;
        }
        let decay = (-(t - c[0]).max(0.0) / window).exp();
        let (n, f) = (c[1] * decay, c[2] * decay);
        f / (n + prior)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::slots::key_hash;

    #[test]
    fn labels_are_due_only_once_known() {
        let l = |known_at| Label {
            known_at,
            anomaly: true,
            keys: vec![],
        };
        let mut q = LabelQueue::new(vec![l(30.0), l(10.0), l(20.0)]);
        assert_eq!(q.due(5.0).len(), 0);
        assert_eq!(q.due(10.0).len(), 1);
        assert_eq!(q.due(25.0).len(), 1);
        assert_eq!(q.pending(), 1);
        assert_eq!(q.due(1e9).len(), 1);
    }

    #[test]
    fn risk_is_the_damped_share_of_confirmed_anomalies() {
        let day = 86400.0;
        let mut r = LabelRisk::new(28.0 * day, 1.0, 16);
        let t = key_hash("terminal 7");
        assert_eq!(r.risk(t, 0.0), 0.0);
        for i in 0..3 {
            r.learn(t, 7.0 * day + i as f64, true);
        }
        r.learn(t, 7.0 * day + 3.0, false);
        let v = r.risk(t, 7.0 * day + 3.0);
        assert!((v - 3.0 / 5.0).abs() < 1e-4, "{v}");
        // Another terminal is untouched; the risk fades over the window.
        assert_eq!(r.risk(key_hash("terminal 8"), 7.0 * day), 0.0);
        assert!(r.risk(t, 100.0 * day) < 0.6);
    }
}
