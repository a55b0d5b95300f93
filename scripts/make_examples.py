#!/usr/bin/env python3
"""Writes the example data in examples/ (deterministic; standard library only).

payments.csv: card payments (amount, hour, merchant risk, distance from home,
seconds since the card's previous payment) with 1% labelled anomalies of the
stolen-card kind: large amounts at odd hours far from home at risky merchants.

device_metrics.csv: temperature and load of 20 devices every minute; three
devices drift away from their own normal for a while (label 1).
"""
import math, os, random

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def payments(path, rows=20000, seed=7):
    rng = random.Random(seed)
    with open(path, "w") as f:
        f.write("card,amount,hour,merchant_risk,distance_km,gap_s,label\n")
        for i in range(rows):
            card = f"c{rng.randrange(500):03d}"
            if rng.random() < 0.01:
                amount = round(rng.uniform(800, 5000), 2)
                hour = rng.choice([1, 2, 3, 4])
                risk = round(rng.uniform(0.6, 1.0), 3)
                dist = round(rng.uniform(500, 9000), 1)
                gap = round(rng.uniform(5, 120), 1)
                label = 1
            else:
                amount = round(math.exp(rng.gauss(3.2, 0.8)), 2)
                hour = min(23, max(0, int(rng.gauss(14, 4))))
                risk = round(rng.betavariate(2, 12), 3)
                dist = round(abs(rng.gauss(8, 10)), 1)
                gap = round(rng.expovariate(1 / 40000), 1)
                label = 0
            f.write(f"{card},{amount},{hour},{risk},{dist},{gap},{label}\n")


def device_metrics(path, minutes=1500, devices=20, seed=11):
    rng = random.Random(seed)
    base = {d: (rng.uniform(30, 70), rng.uniform(0.5, 3.0)) for d in range(devices)}
    drifting = {3: (600, 700), 11: (900, 960), 17: (1200, 1320)}
    with open(path, "w") as f:
        f.write("minute,device,temperature,load,label\n")
        for m in range(minutes):
            for d in range(devices):
                mean, sd = base[d]
                temp = rng.gauss(mean, sd)
                load = max(0.0, rng.gauss(0.4, 0.1))
                label = 0
                if d in drifting and drifting[d][0] <= m < drifting[d][1]:
                    temp += 6 * sd + (m - drifting[d][0]) * sd * 0.05
                    label = 1
                f.write(f"{m},dev{d:02d},{temp:.3f},{load:.3f},{label}\n")


if __name__ == "__main__":
    out = os.path.join(ROOT, "examples")
    os.makedirs(out, exist_ok=True)
    payments(os.path.join(out, "payments.csv"))
    device_metrics(os.path.join(out, "device_metrics.csv"))
