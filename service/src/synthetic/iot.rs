//! Device metrics (`metrics` topic), keyed by device.
//!
//! Each device reports about every 60 s with its own normal temperature
//! (autocorrelated noise around its own mean and std), vibration and a
//! battery that drains and is recharged. Injected: drift (temperature
//! 4–10 of the device's own std away from its mean, ramping, for 10–30
//! reports) and silence (no report for 30–120 min; the first report after
//! it is labelled).

use super::sim::{population, IncidentSpec, JsonObject, Rng, Timeline};
use super::{Anomaly, Draft, Source};

/// About 1.7% of reports are injected anomalies. Silences are rare because
/// each one takes a device off the air for up to two hours.
pub(crate) const INCIDENTS: &[IncidentSpec] = &[
    IncidentSpec {
        anomaly: Anomaly::Drift,
        share: 0.016,
        mean_labels: 20.0,
        // Devices have sent ESTABLISHED_REPORTS by about 12% of the stream.
        earliest: 0.2,
        latest: 0.95,
    },
    IncidentSpec {
        anomaly: Anomaly::Silent,
        share: 0.001,
        mean_labels: 1.0,
        earliest: 0.02,
        latest: 0.6,
    },
];

/// Reports a device must have sent before it can drift: drifting "from its
/// own normal" needs a normal to drift from.
const ESTABLISHED_REPORTS: usize = 30;

/// Correlation of a device's temperature noise from one report to the next.
const TEMPERATURE_AR: f64 = 0.7;

struct Drift {
    done: usize,
    len: usize,
    direction: f64,
    peak_stds: f64,
}

struct Device {
    period_s: f64,
    temperature_mean: f64,
    temperature_std: f64,
    temperature_noise: f64,
    vibration_mean: f64,
    vibration_std: f64,
    battery: f64,
    drain: f64,
    drift: Option<Drift>,
    reports: usize,
    silent_until: f64,
    back_from_silence: bool,
}

pub(crate) struct Iot {
    devices: Vec<Device>,
    /// Next report of each device.
    timeline: Timeline<usize>,
    now: f64,
}

impl Iot {
    pub(crate) fn new(rng: &mut Rng, count: usize, start_ts: f64) -> Self {
        let devices: Vec<Device> = (0..population(count, 250, 10, 300))
            .map(|_| {
                let vibration_mean = rng.uniform(0.1, 0.6);
                Device {
                    period_s: rng.uniform(58.0, 62.0),
                    temperature_mean: rng.uniform(25.0, 60.0),
                    temperature_std: rng.uniform(0.3, 1.5),
                    temperature_noise: rng.normal(),
                    vibration_mean,
                    vibration_std: vibration_mean * rng.uniform(0.05, 0.15),
                    battery: rng.uniform(3.6, 4.2),
                    drain: rng.uniform(0.000_05, 0.000_2),
                    drift: None,
                    reports: 0,
                    silent_until: f64::NEG_INFINITY,
                    back_from_silence: false,
                }
            })
            .collect();
        let mut timeline = Timeline::new();
        for (i, device) in devices.iter().enumerate() {
            timeline.push(start_ts + rng.uniform(0.0, device.period_s), i);
        }
        Self {
            devices,
            timeline,
            now: start_ts,
        }
    }

    /// A device that is neither drifting nor silent and has sent at least
    /// `reports` reports, if one turns up quickly.
    fn healthy_device(&self, rng: &mut Rng, reports: usize) -> Option<usize> {
        (0..20).map(|_| rng.below(self.devices.len())).find(|&i| {
            let d = &self.devices[i];
            d.drift.is_none()
                && d.silent_until < self.now
                && !d.back_from_silence
                && d.reports >= reports
        })
    }
}

impl Source for Iot {
    fn inject(&mut self, anomaly: Anomaly, rng: &mut Rng) {
        let reports = match anomaly {
            Anomaly::Drift => ESTABLISHED_REPORTS,
            _ => 0,
        };
        let Some(i) = self.healthy_device(rng, reports) else {
            return;
        };
        let device = &mut self.devices[i];
        match anomaly {
            Anomaly::Drift => {
                device.drift = Some(Drift {
                    done: 0,
                    len: rng.between(10, 30),
                    // Overheating is the usual failure; sensors also freeze low.
                    direction: if rng.chance(0.75) { 1.0 } else { -1.0 },
                    peak_stds: rng.uniform(6.0, 10.0),
                });
            }
            Anomaly::Silent => device.silent_until = self.now + rng.uniform(1800.0, 7200.0),
            other => unreachable!("iot does not inject {other:?}"),
        }
    }

    fn next(&mut self, rng: &mut Rng, id: &str) -> Draft {
        loop {
            let (ts, i) = self
                .timeline
                .pop()
                .expect("every device is always scheduled");
            let device = &mut self.devices[i];
            if ts < device.silent_until {
                // The report never happens; the device comes back after the silence.
                device.back_from_silence = true;
                let back = device.silent_until + rng.uniform(0.0, device.period_s);
                self.timeline.push(back, i);
                continue;
            }
            self.now = ts;
            device.reports += 1;
            self.timeline
                .push(ts + device.period_s * rng.uniform(0.97, 1.03), i);

            device.temperature_noise = TEMPERATURE_AR * device.temperature_noise
                + (1.0 - TEMPERATURE_AR * TEMPERATURE_AR).sqrt() * rng.normal();
            let mut temperature =
                device.temperature_mean + device.temperature_std * device.temperature_noise;
            let mut anomaly = None;
            if let Some(drift) = &mut device.drift {
                let progress = drift.done as f64 / (drift.len - 1) as f64;
                let stds = 4.0 + (drift.peak_stds - 4.0) * progress;
                temperature += drift.direction * stds * device.temperature_std;
                drift.done += 1;
                if drift.done == drift.len {
                    device.drift = None;
                }
                anomaly = Some(Anomaly::Drift);
            }
            if device.back_from_silence {
                device.back_from_silence = false;
                anomaly = Some(Anomaly::Silent);
            }
            device.battery -= device.drain;
            if device.battery < 3.45 {
                device.battery = rng.uniform(4.05, 4.2);
            }
            let vibration = (device.vibration_mean + device.vibration_std * rng.normal()).max(0.0);
            let battery = device.battery + 0.003 * rng.normal();

            let value = JsonObject::new(id, ts)
                .code("device", "dev", i, 3)
                .num("temperature", temperature, 2)
                .num("vibration", vibration, 3)
                .num("battery", battery, 3)
                .finish();
            return Draft {
                key: format!("dev-{i:03}"),
                value,
                anomaly,
                pinned: false,
            };
        }
    }
}
