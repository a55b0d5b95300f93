//! Card transactions (`transactions` topic), keyed by card.
//!
//! Each card has a home country, a typical amount and a few favourite
//! merchants; some cards are busier than others. Injected: stolen cards (a
//! few large, foreign, risky-merchant transactions), duplicates (an exact
//! repeat of a card's transaction seconds later) and bursts (8–20
//! transactions on one card within a minute).

use super::sim::{population, IncidentSpec, JsonObject, Rng, Timeline, Weighted};
use super::{Anomaly, Draft, Source};

/// About 2% of transactions are injected anomalies.
pub(crate) const INCIDENTS: &[IncidentSpec] = &[
    IncidentSpec {
        anomaly: Anomaly::StolenCard,
        share: 0.006,
        mean_labels: 2.0,
        earliest: 0.02,
        latest: 0.95,
    },
    IncidentSpec {
        anomaly: Anomaly::Duplicate,
        share: 0.006,
        mean_labels: 1.0,
        earliest: 0.02,
        latest: 0.95,
    },
    IncidentSpec {
        anomaly: Anomaly::Burst,
        share: 0.008,
        mean_labels: 11.0,
        earliest: 0.02,
        latest: 0.95,
    },
];

/// Home countries are mostly those of a European issuer; fraud comes from anywhere.
const COUNTRIES: [&str; 16] = [
    "DE", "FR", "NL", "ES", "IT", "PL", "SE", "GB", "US", "CA", "BR", "MX", "JP", "IN", "NG", "AU",
];
const HOME_COUNTRIES: usize = 8;
const MERCHANTS: usize = 500;
/// Mean time between two transactions of an average card.
const CARD_MEAN_GAP_S: f64 = 1800.0;
/// Burst records up to this many are the lead-in, not yet anomalous.
const BURST_LEAD_IN: usize = 3;

struct Card {
    home: usize,
    median_amount: f64,
    amount_spread: f64,
    favourites: [usize; 4],
}

#[derive(Clone)]
struct Txn {
    card: usize,
    amount: f64,
    merchant: usize,
    country: usize,
    distance_km: f64,
}

struct Scheduled {
    txn: Txn,
    anomaly: Option<Anomaly>,
    pinned: bool,
}

pub(crate) struct Fraud {
    cards: Vec<Card>,
    activity: Weighted,
    merchant_risk: Vec<f64>,
    safe_merchants: Vec<usize>,
    risky_merchants: Vec<usize>,
    timeline: Timeline<Scheduled>,
    next_normal_ts: f64,
    mean_gap_s: f64,
    now: f64,
    /// Duplicate incidents waiting for the next normal transaction.
    duplicates_due: usize,
}

impl Fraud {
    pub(crate) fn new(rng: &mut Rng, count: usize, start_ts: f64) -> Self {
        let merchant_risk: Vec<f64> = (0..MERCHANTS)
            .map(|_| {
                if rng.chance(0.1) {
                    rng.uniform(0.6, 1.0)
                } else {
                    rng.uniform(0.01, 0.3)
                }
            })
            .collect();
        let (risky_merchants, safe_merchants): (Vec<usize>, Vec<usize>) =
            (0..MERCHANTS).partition(|&m| merchant_risk[m] >= 0.6);
        let n_cards = population(count, 50, 50, 2000);
        let cards: Vec<Card> = (0..n_cards)
            .map(|_| Card {
                home: if rng.chance(0.9) {
                    rng.below(HOME_COUNTRIES)
                } else {
                    rng.below(COUNTRIES.len())
                },
                median_amount: (3.3 + 0.7 * rng.normal()).exp().clamp(3.0, 800.0),
                amount_spread: rng.uniform(0.3, 0.8),
                favourites: std::array::from_fn(|_| {
                    safe_merchants[rng.below(safe_merchants.len())]
                }),
            })
            .collect();
        let activity = Weighted::new((0..n_cards).map(|_| (0.8 * rng.normal()).exp()));
        let mean_gap_s = CARD_MEAN_GAP_S / n_cards as f64;
        Self {
            cards,
            activity,
            merchant_risk,
            safe_merchants,
            risky_merchants,
            timeline: Timeline::new(),
            next_normal_ts: start_ts + rng.exp(mean_gap_s),
            mean_gap_s,
            now: start_ts,
            duplicates_due: 0,
        }
    }

    fn usual_amount(&self, rng: &mut Rng, card: usize) -> f64 {
        let c = &self.cards[card];
        (c.median_amount * (c.amount_spread * rng.normal()).exp()).max(0.5)
    }

    fn home_distance(rng: &mut Rng) -> f64 {
        if rng.chance(0.03) {
            rng.uniform(50.0, 800.0)
        } else {
            rng.exp(6.0)
        }
    }

    fn normal_txn(&self, rng: &mut Rng) -> Txn {
        let card = self.activity.pick(rng);
        let c = &self.cards[card];
        let merchant = match rng.unit() {
            u if u < 0.85 => c.favourites[rng.below(c.favourites.len())],
            // Legitimate customers do sometimes pay at high-risk merchants.
            u if u < 0.995 => self.safe_merchants[rng.below(self.safe_merchants.len())],
            _ => self.risky_merchants[rng.below(self.risky_merchants.len())],
        };
        let (country, distance_km) = if rng.chance(0.005) {
            (other_country(rng, c.home), rng.uniform(300.0, 3000.0))
        } else {
            (c.home, Self::home_distance(rng))
        };
        Txn {
            card,
            amount: self.usual_amount(rng, card),
            merchant,
            country,
            distance_km,
        }
    }

    fn schedule(&mut self, ts: f64, txn: Txn, anomaly: Option<Anomaly>, pinned: bool) {
        self.timeline.push(
            ts,
            Scheduled {
                txn,
                anomaly,
                pinned,
            },
        );
    }

    fn render(&self, id: &str, ts: f64, txn: &Txn) -> (String, Vec<u8>) {
        let c = &self.cards[txn.card];
        let value = JsonObject::new(id, ts)
            .code("card", "card", txn.card, 4)
            .num("amount", txn.amount, 2)
            .code("merchant", "m", txn.merchant, 3)
            .num("merchant_risk", self.merchant_risk[txn.merchant], 2)
            .str("country", COUNTRIES[txn.country])
            .int("foreign", u64::from(txn.country != c.home))
            .num("distance_km", txn.distance_km, 1)
            .finish();
        (format!("card-{:04}", txn.card), value)
    }
}

fn other_country(rng: &mut Rng, home: usize) -> usize {
    (home + 1 + rng.below(COUNTRIES.len() - 1)) % COUNTRIES.len()
}

impl Source for Fraud {
    fn inject(&mut self, anomaly: Anomaly, rng: &mut Rng) {
        match anomaly {
            Anomaly::StolenCard => {
                let card = self.activity.pick(rng);
                let c = &self.cards[card];
                let (home, median) = (c.home, c.median_amount);
                let mut ts = self.now + rng.uniform(0.0, 60.0);
                for _ in 0..rng.between(1, 3) {
                    let txn = Txn {
                        card,
                        amount: median * rng.uniform(10.0, 50.0),
                        merchant: self.risky_merchants[rng.below(self.risky_merchants.len())],
                        country: other_country(rng, home),
                        distance_km: rng.uniform(2000.0, 9500.0),
                    };
                    self.schedule(ts, txn, Some(Anomaly::StolenCard), false);
                    ts += rng.uniform(30.0, 900.0);
                }
            }
            Anomaly::Duplicate => self.duplicates_due += 1,
            Anomaly::Burst => {
                let card = self.activity.pick(rng);
                let home = self.cards[card].home;
                let n = rng.between(8, 20);
                let start = self.now + rng.uniform(0.0, 5.0);
                let window = rng.uniform(20.0, 60.0);
                for (i, offset) in rng.sorted_offsets(n, window).into_iter().enumerate() {
                    let txn = Txn {
                        card,
                        amount: self.usual_amount(rng, card),
                        merchant: self.safe_merchants[rng.below(self.safe_merchants.len())],
                        country: home,
                        distance_km: Self::home_distance(rng),
                    };
                    let lead_in = i < BURST_LEAD_IN;
                    let anomaly = (!lead_in).then_some(Anomaly::Burst);
                    self.schedule(start + offset, txn, anomaly, lead_in);
                }
            }
            other => unreachable!("fraud does not inject {other:?}"),
        }
    }

    fn next(&mut self, rng: &mut Rng, id: &str) -> Draft {
        if self
            .timeline
            .peek_ts()
            .is_some_and(|ts| ts <= self.next_normal_ts)
        {
            let (ts, scheduled) = self.timeline.pop().expect("peeked");
            self.now = ts;
            let (key, value) = self.render(id, ts, &scheduled.txn);
            return Draft {
                key,
                value,
                anomaly: scheduled.anomaly,
                pinned: scheduled.pinned,
            };
        }
        let ts = self.next_normal_ts;
        self.now = ts;
        self.next_normal_ts += rng.exp(self.mean_gap_s);
        let txn = self.normal_txn(rng);
        let (key, value) = self.render(id, ts, &txn);
        let mut draft = Draft::normal(key, value);
        if self.duplicates_due > 0 {
            self.duplicates_due -= 1;
            draft.pinned = true;
            self.schedule(
                ts + rng.uniform(1.0, 60.0),
                txn,
                Some(Anomaly::Duplicate),
                false,
            );
        }
        draft
    }
}
