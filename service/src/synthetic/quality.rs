//! Feed events (`events` topic), keyed by feed.
//!
//! Each feed sends a value about every 10 s (a daily cycle plus noise) with a
//! sequence number. Injected: gaps (the feed goes silent for 10–60 min; the
//! first event after it is labelled, and its `seq` shows the events lost).
//! The generator also corrupts about 0.5% of this scenario's records itself,
//! since corrupt events are the other half of data quality.

use std::f64::consts::TAU;

use super::sim::{population, IncidentSpec, JsonObject, Rng, Timeline};
use super::{Anomaly, Draft, Source};

/// Gaps are about 0.1% of events (plus 0.5% corrupt events added by the
/// generator). More would be unrealistic: at 10 s per event a 10–60 min gap
/// takes a feed off the air for ~200 events, so a 1% share of gaps would
/// leave feeds silent most of the time.
pub(crate) const INCIDENTS: &[IncidentSpec] = &[IncidentSpec {
    anomaly: Anomaly::Gap,
    share: 0.001,
    mean_labels: 1.0,
    earliest: 0.02,
    latest: 0.6,
}];

const DAY_S: f64 = 86_400.0;

struct Feed {
    period_s: f64,
    mean: f64,
    daily_amplitude: f64,
    phase: f64,
    noise: f64,
    seq: u64,
    silent_until: f64,
    back_from_gap: bool,
    last_ts: f64,
}

pub(crate) struct Quality {
    feeds: Vec<Feed>,
    timeline: Timeline<usize>,
    now: f64,
}

impl Quality {
    pub(crate) fn new(rng: &mut Rng, count: usize, start_ts: f64) -> Self {
        let feeds: Vec<Feed> = (0..population(count, 1000, 4, 40))
            .map(|_| {
                let mean = (2.0 + 1.5 * rng.normal()).exp().clamp(1.0, 5000.0);
                Feed {
                    period_s: rng.uniform(9.5, 10.5),
                    mean,
                    daily_amplitude: mean * rng.uniform(0.05, 0.3),
                    phase: rng.uniform(0.0, TAU),
                    noise: mean * rng.uniform(0.01, 0.05),
                    seq: rng.between(1, 100_000) as u64,
                    silent_until: f64::NEG_INFINITY,
                    back_from_gap: false,
                    last_ts: start_ts,
                }
            })
            .collect();
        let mut timeline = Timeline::new();
        for (i, feed) in feeds.iter().enumerate() {
            timeline.push(start_ts + rng.uniform(0.0, feed.period_s), i);
        }
        Self {
            feeds,
            timeline,
            now: start_ts,
        }
    }
}

impl Source for Quality {
    fn inject(&mut self, anomaly: Anomaly, rng: &mut Rng) {
        debug_assert_eq!(anomaly, Anomaly::Gap, "quality only injects gaps");
        let now = self.now;
        let feed = (0..20)
            .map(|_| rng.below(self.feeds.len()))
            .find(|&i| self.feeds[i].silent_until < now && !self.feeds[i].back_from_gap);
        if let Some(i) = feed {
            self.feeds[i].silent_until = now + rng.uniform(600.0, 3600.0);
        }
    }

    fn next(&mut self, rng: &mut Rng, id: &str) -> Draft {
        loop {
            let (ts, i) = self.timeline.pop().expect("every feed is always scheduled");
            let feed = &mut self.feeds[i];
            if ts < feed.silent_until {
                feed.back_from_gap = true;
                let back = feed.silent_until + rng.uniform(0.0, feed.period_s);
                self.timeline.push(back, i);
                continue;
            }
            self.now = ts;
            self.timeline
                .push(ts + feed.period_s * rng.uniform(0.9, 1.1), i);
            let anomaly = if feed.back_from_gap {
                // The events of the gap were lost upstream, not never made.
                let periods = ((ts - feed.last_ts) / feed.period_s).round() as u64;
                feed.seq += periods.saturating_sub(1);
                feed.back_from_gap = false;
                Some(Anomaly::Gap)
            } else {
                None
            };
            feed.seq += 1;
            feed.last_ts = ts;
            let value = feed.mean
                + feed.daily_amplitude * (TAU * ts / DAY_S + feed.phase).sin()
                + feed.noise * rng.normal();
            let value = JsonObject::new(id, ts)
                .code("feed", "feed", i, 2)
                .num("value", value, 2)
                .int("seq", feed.seq)
                .finish();
            return Draft {
                key: format!("feed-{i:02}"),
                value,
                anomaly,
                pinned: false,
            };
        }
    }
}
