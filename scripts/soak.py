#!/usr/bin/env python3
"""Soak-and-fault test of `isoflow run` against a real Apache Kafka broker.

Starts a single-node KRaft Kafka 4.1.1 (jars from scripts/kafka.sh, set up as
in scripts/kafka_check.py) on loopback in a temp dir that survives broker
restarts, creates the topics, and runs the service (a copy of
target/release/isoflow, RUST_LOG=info, logged to WORKDIR/service.log) with
the fraud model. A producer writes fraud-like JSON records keyed by card at
--rate records/s for --minutes into a 4-partition topic; 1% are corrupt
(invalid JSON, missing field, non-numeric field) and every 30 s one record
is 1.2 MB (over the service's default max_message_bytes: DLQ, too_large).
Faults: at 1/3 of the run the broker is killed (kill -9 by default, see
--broker-signal) and restarted on the same dir; at 2/3 the service is
killed with kill -9 and started again with the same config and group.
At the end it stops producing, waits (at most 120 s) until the service's
committed offsets reach the input's end offsets, stops the service with
SIGTERM, then reads the input, scores and DLQ topics and prints: records
produced, accounted, unaccounted, duplicates, DLQ by reason, peak service
RSS, and end-to-end latency (score message timestamp minus input record
timestamp, joined on source partition/offset). Exits 1 if any input record
is in neither the scores nor the DLQ topic.

    python3 scripts/soak.py --minutes 10 --rate 20000
"""
import argparse, json, os, random, shutil, signal, subprocess, sys
import tempfile, threading, time, urllib.request
import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.dont_write_bytecode = True
_argv, sys.argv = sys.argv, sys.argv[:1]  # kafka_check reads LIBS from argv at import
import kafka_check as kc  # noqa: E402  (config(), CLUSTER_ID, free_port())
sys.argv = _argv

IN, SCORES, ALERTS, DLQ, GROUP = "soak.transactions", "soak.scores", "soak.alerts", "soak.dlq", "soak"
BIG_EVERY_S, BIG_BYTES = 30, 1_200_000
KINDS = ("ok", "invalid_json", "missing_field", "wrong_type", "too_large")
COUNTRIES = ["DE", "FR", "NL", "ES", "IT", "PL", "SE", "GB", "US", "CA", "BR", "MX", "JP", "IN", "NG", "AU"]


class Broker:
    def __init__(self, dir, libs):
        self.dir, self.port, cport = dir, kc.free_port(), kc.free_port()
        self.java = ["java", "-Xmx1g", "-Xms256m", "-XX:+UseSerialGC",
                     "-Dorg.apache.logging.log4j.level=INFO", "-cp", os.path.join(libs, "*")]
        with open(f"{dir}/server.properties", "w") as f:
            f.write(kc.config(dir, self.port, cport))
        subprocess.run(self.java + ["kafka.tools.StorageTool", "format", "-t", kc.CLUSTER_ID,
                                    "-c", f"{dir}/server.properties"],
                       check=True, stdout=subprocess.DEVNULL)
        self.log, self.proc = open(f"{dir}/broker.log", "ab"), None

    def conf(self, **kw):
        return {"bootstrap.servers": f"127.0.0.1:{self.port}", "log_level": 2, **kw}

    def start(self):
        t0 = time.time()
        self.proc = subprocess.Popen(self.java + ["kafka.Kafka", f"{self.dir}/server.properties"],
                                     stdout=self.log, stderr=self.log)
        admin = AdminClient(self.conf())
        while True:
            assert self.proc.poll() is None, f"broker exited; see {self.dir}/broker.log"
            try:
                admin.list_topics(timeout=1)
                return time.time() - t0
            except Exception:
                time.sleep(0.1)


class Service:
    def __init__(self, dir, brokers, backend):
        self.bin = f"{dir}/isoflow"  # a copy: a rebuild mid-run must not change the binary
        shutil.copy2(f"{ROOT}/target/release/isoflow", self.bin)
        self.metrics, self.log_path = f"127.0.0.1:{kc.free_port()}", f"{dir}/service.log"
        self.cfg = f"{dir}/soak.toml"
        with open(self.cfg, "w") as f:
            f.write(f'[kafka]\nbrokers = "{brokers}"\ngroup_id = "{GROUP}"\n\n'
                    f'[service]\nbackend = "{backend}"\nmetrics_listen = "{self.metrics}"\n\n'
                    f'[[pipeline]]\nname = "fraud"\ninput_topic = "{IN}"\n'
                    f'model = "{ROOT}/models/fraud.isoflow"\nalerts_topic = "{ALERTS}"\n'
                    f'dlq_topic = "{DLQ}"\nscores_topic = "{SCORES}"\n')
        self.proc, self.peak_rss = None, {}  # pid -> MB

    def start(self):
        log = open(self.log_path, "ab")
        log.write(f"\n==== soak.py: starting service at {time.strftime('%T')} ====\n".encode())
        log.flush()
        self.proc = subprocess.Popen([self.bin, "run", "--config", self.cfg], stdout=log,
                                     stderr=log, env={**os.environ, "RUST_LOG": "info"})
        self.peak_rss[self.proc.pid] = 0
        for _ in range(600):
            assert self.proc.poll() is None, f"service exited; see {self.log_path}"
            try:
                urllib.request.urlopen(f"http://{self.metrics}/health", timeout=1).read()
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("service not healthy after 60 s")

    def lag(self):
        try:
            text = urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=1).read()
        except Exception:
            return None
        return sum(int(float(l.split()[-1])) for l in text.decode().splitlines()
                   if l.startswith("isoflow_consumer_lag"))


def proc_stats(pid):
    """(VmRSS in MB, CPU seconds) of a live process, or None."""
    try:
        rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS"))
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return rss / 1024, (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration):
        return None


class Cards:
    """Fraud-like transactions as `isoflow gen --scenario fraud` makes them:
    2000 cards with a home country, usual amount and favourite merchants, an
    average card paying every 1800 s of event time (`ts` advances by
    1800/2000 s a record, whatever the wall-clock rate)."""

    def __init__(self, rng, n=2000):
        self.rng, self.n, self.ts = rng, n, 1767225600.0
        self.risk = [rng.uniform(0.6, 1.0) if rng.random() < 0.1 else rng.uniform(0.01, 0.3)
                     for _ in range(500)]
        safe = [m for m in range(500) if self.risk[m] < 0.6]
        self.safe, self.risky = safe, [m for m in range(500) if self.risk[m] >= 0.6]
        self.cards = [(rng.randrange(8) if rng.random() < 0.9 else rng.randrange(16),
                       min(max(rng.lognormvariate(3.3, 0.7), 3.0), 800.0), rng.uniform(0.3, 0.8),
                       [rng.choice(safe) for _ in range(4)]) for _ in range(n)]
        self.weights = [rng.lognormvariate(0, 0.8) for _ in range(n)]

    def picks(self, k):
        return self.rng.choices(range(self.n), self.weights, k=k)

    def record(self, i, c):
        rng, (home, median, spread, fav) = self.rng, self.cards[c]
        u = rng.random()
        m = rng.choice(fav if u < 0.85 else self.safe if u < 0.995 else self.risky)
        country, dist = home, (rng.uniform(50, 800) if rng.random() < 0.03 else rng.expovariate(1 / 6))
        if rng.random() < 0.005:
            country, dist = (home + 1 + rng.randrange(15)) % 16, rng.uniform(300, 3000)
        self.ts += 1800 / self.n
        return {"id": f"soak-{i:09d}", "ts": round(self.ts, 3), "card": f"card-{c:04d}",
                "amount": round(max(median * rng.lognormvariate(0, spread), 0.5), 2),
                "merchant": f"m-{m:03d}", "merchant_risk": round(self.risk[m], 2),
                "country": COUNTRIES[country], "foreign": int(country != home),
                "distance_km": round(dist, 1)}


def records(rate, seconds, prod, stop, counts):
    """Producer loop: paced records, 1% corrupt, a 1.2 MB record every 30 s."""
    gen = Cards(random.Random(1))
    t0 = next_big = time.time()
    i, picks = 0, []
    while not stop.is_set() and time.time() - t0 < seconds:
        target = min(int(rate * (time.time() - t0)) + 1, int(rate * seconds))
        while i < target and not stop.is_set():
            picks = picks or gen.picks(1000)
            rec = gen.record(i, picks.pop())
            kind = "ok"
            if i % 100 == 99:
                kind = ("invalid_json", "missing_field", "wrong_type")[(i // 100) % 3]
                if kind == "missing_field":
                    del rec["amount"]
                elif kind == "wrong_type":
                    rec["amount"] = "12,50 EUR"
            elif time.time() >= next_big:
                kind, next_big = "too_large", next_big + BIG_EVERY_S
                rec["note"] = "x" * BIG_BYTES
            value = json.dumps(rec, separators=(",", ":"))
            if kind == "invalid_json":
                value = value[: len(value) // 2]
            while True:
                try:
                    prod.produce(IN, value=value, key=rec["card"])
                    break
                except BufferError:  # queue full (broker down): wait for room
                    prod.poll(0.05)
            counts[kind] = counts.get(kind, 0) + 1
            i += 1
            if i % 1000 == 0:
                prod.poll(0)
        prod.poll(0.005)
    counts["seconds"] = time.time() - t0


def read_topic(broker, topic, handle):
    """Calls handle(msg) for every message of topic up to its current end."""
    c = Consumer(broker.conf(**{"group.id": "soak-reader", "enable.auto.commit": False}))
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    left = {p for p, e in ends.items() if e > 0}
    c.assign([TopicPartition(topic, p, 0) for p in left])
    idle = time.time()
    while left and time.time() - idle < 60:
        for m in c.consume(10000, timeout=1):
            if m.error():
                continue
            idle = time.time()
            handle(m)
            if m.offset() + 1 >= ends[m.partition()]:
                left.discard(m.partition())
    c.close()
    return ends


def stats(lat):
    if not len(lat):
        return "-"
    p50, p99 = np.percentile(lat, [50, 99])
    return f"p50 {p50:.0f}  p99 {p99:.0f}  max {lat.max()}  (n={len(lat)})"


def run(a, dir, broker, svc, stop):
    """Load and faults; returns the input's end offsets and what was measured."""
    seconds, counts, cpu, lags, events, done = a.minutes * 60, {}, {}, [], [], threading.Event()
    print(f"broker started in {broker.start():.1f}s", flush=True)
    big = {"max.message.bytes": str(2 * 1024 * 1024)}
    admin = AdminClient(broker.conf())  # kept: its futures die with it
    for f in admin.create_topics([
            NewTopic(IN, 4, 1, config=big), NewTopic(SCORES, 4, 1), NewTopic(ALERTS, 1, 1),
            NewTopic(DLQ, 1, 1)]).values():
        f.result()
    svc.start()

    def monitor():  # every second: RSS and CPU of the service processes, the lag gauge
        while not done.is_set():
            for pid in list(svc.peak_rss):
                if s := proc_stats(pid):
                    svc.peak_rss[pid], cpu[pid] = max(svc.peak_rss[pid], s[0]), s[1]
            if s := proc_stats(broker.proc.pid):
                cpu[("broker", broker.proc.pid)] = s[1]
            lags.append((time.time(), svc.lag()))
            done.wait(1)
    threading.Thread(target=monitor, daemon=True).start()

    prod = Producer(broker.conf(**{
        "acks": "all", "enable.idempotence": True, "linger.ms": 10,
        "message.max.bytes": 2_000_000, "queue.buffering.max.messages": 2_000_000,
        "queue.buffering.max.kbytes": 1_048_576, "delivery.report.only.error": True,
        "on_delivery": lambda err, m: err and counts.__setitem__(
            "delivery_errors", counts.get("delivery_errors", 0) + 1)}))
    t0 = time.time()
    events.append(("start", t0, t0, 5))  # the group's first join
    pt = threading.Thread(target=records, args=(a.rate, seconds, prod, stop, counts))
    pt.start()

    def at(frac):
        while pt.is_alive() and time.time() - t0 < frac * seconds:
            time.sleep(0.2)
    at(1 / 3)
    t = time.time()
    broker.proc.send_signal(signal.SIGKILL if a.broker_signal == "kill" else signal.SIGTERM)
    broker.proc.wait(120)
    print(f"t={t - t0:.0f}s broker {a.broker_signal}: exited in {time.time() - t:.1f}s, "
          f"restarted in {broker.start():.1f}s", flush=True)
    events.append(("broker restart", t, time.time(), 30))
    at(2 / 3)
    t = time.time()
    svc.proc.kill()
    svc.proc.wait()
    svc.start()
    print(f"t={t - t0:.0f}s service kill -9: healthy again after {time.time() - t:.1f}s", flush=True)
    events.append(("service kill -9", t, time.time(), 30))
    pt.join()
    left = prod.flush(120)
    cpu["producer"] = time.process_time()
    print(f"producing done: {counts.get('seconds', 0):.0f}s, {sum(counts.get(k, 0) for k in KINDS)} "
          f"queued, {left} not flushed, {counts.get('delivery_errors', 0)} delivery errors", flush=True)

    # Catch-up: the service's committed offsets reach the input's end offsets.
    parts = [TopicPartition(IN, p) for p in range(4)]
    cc = Consumer(broker.conf(**{"group.id": f"{GROUP}.fraud"}))
    ends = [cc.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
    t = time.time()
    while True:
        committed = [max(tp.offset, 0) for tp in cc.committed(parts, timeout=10)]
        if committed == ends or time.time() - t > 120:
            break
        time.sleep(1)
    alerts = cc.get_watermark_offsets(TopicPartition(ALERTS, 0), timeout=10)[1]
    cc.close()
    print(f"catch-up: committed {sum(committed)} of {sum(ends)} after {time.time() - t:.0f}s, "
          f"lag metric {svc.lag()}", flush=True)
    svc.proc.send_signal(signal.SIGTERM)
    print(f"service exit status after SIGTERM: {svc.proc.wait(60)}", flush=True)
    done.set()
    return ends, dict(counts=counts, cpu=cpu, lags=lags, events=events, alerts=alerts, t0=t0)


def check(a, dir, broker, svc, ends, counts, cpu, lags, events, alerts, t0):
    """Joins input, scores and DLQ on (partition, offset); prints; returns the exit status."""
    in_ts = [np.zeros(e, np.int64) for e in ends]
    score_ts = [np.full(e, -1, np.int64) for e in ends]
    in_dlq = [np.zeros(e, np.int32) for e in ends]
    dup, reasons = {"scores": 0, "dlq": 0}, {}
    read_topic(broker, IN, lambda m: in_ts[m.partition()].__setitem__(m.offset(), m.timestamp()[1]))

    def on_score(m):
        s = json.loads(m.value())["source"]
        p, o = s["partition"], s["offset"]
        if score_ts[p][o] >= 0:
            dup["scores"] += 1
        else:
            score_ts[p][o] = m.timestamp()[1]

    def on_dlq(m):
        h = {k: v.decode() for k, v in (m.headers() or [])}
        p, o = int(h["isoflow.source.partition"]), int(h["isoflow.source.offset"])
        reasons[h["isoflow.error.reason"]] = reasons.get(h["isoflow.error.reason"], 0) + 1
        dup["dlq"] += int(in_dlq[p][o] > 0)
        in_dlq[p][o] += 1
    read_topic(broker, SCORES, on_score)
    read_topic(broker, DLQ, on_dlq)

    produced = sum(ends)
    missing = [(p, int(o)) for p in range(4)
               for o in np.nonzero((score_ts[p] < 0) & (in_dlq[p] == 0))[0]]
    both = sum(int(((score_ts[p] >= 0) & (in_dlq[p] > 0)).sum()) for p in range(4))
    dlqd = sum(int((d > 0).sum()) for d in in_dlq)
    its, sts = np.concatenate(in_ts), np.concatenate(score_ts)
    its, lat = its[sts >= 0], (sts - its)[sts >= 0]
    quiet, slow_for = np.ones(len(lat), bool), []
    for name, a0, a1, tail in events:  # window: from the fault to `tail` s after recovery
        win = (its >= (a0 - 1) * 1000) & (its <= (a1 + tail) * 1000)
        quiet &= ~win
        slow = win & (lat > 1000)  # when the window's last record over 1 s was scored
        back = f"{(its[slow] + lat[slow]).max() / 1000 - a0:.0f}s" if slow.any() else "-"
        slow_for.append(f"{name} at t={a0 - t0:.0f}s: {back}")
    np.savez(f"{dir}/latency.npz", input_ts_ms=its, latency_ms=lat,
             lag=np.array([(t, -1 if l is None else l) for t, l in lags]))
    sent = {k: v for k, v in counts.items() if k in KINDS[1:]}
    cpu_of = lambda kind: sum(v for k, v in cpu.items() if isinstance(k, kind))
    peak = ", ".join(f"{v:.0f}" for v in svc.peak_rss.values())
    print(f"""
records produced   {produced} (input end offsets; {produced / counts['seconds']:.0f}/s of {a.rate}/s asked)
accounted          {produced - len(missing)} (scored {len(lat)}, DLQ {dlqd})
unaccounted        {len(missing)}{'  e.g. ' + str(missing[:10]) if missing else ''}
duplicates         {dup['scores'] + dup['dlq'] + both} (scores {dup['scores']}, DLQ {dup['dlq']}, in both {both})
DLQ by reason      {json.dumps(reasons, sort_keys=True)}
  records sent     {json.dumps(sent, sort_keys=True)}
peak service RSS   {max(svc.peak_rss.values()):.0f} MB (per process: {peak} MB)
latency e2e ms     {stats(lat)}
  outside faults   {stats(lat[quiet])}
                   (excluded: the first 5 s, and each fault until 30 s after recovery)
latency >1 s for   {'; '.join(slow_for)} (from the fault to the last such score)
max consumer lag   {max((l for _, l in lags if l is not None), default=None)} (isoflow_consumer_lag, sampled every second)
alerts             {alerts} ({100 * alerts / max(len(lat), 1):.2f}% of scored)
CPU seconds        service {cpu_of(int):.0f}, broker {cpu_of(tuple):.0f}, soak.py {cpu['producer']:.0f} producing + {time.process_time() - cpu['producer']:.0f} checking; {time.time() - t0:.0f}s wall, {os.cpu_count()} cores
latencies saved to {dir}/latency.npz""")
    return 1 if missing else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=int, default=20000, help="records/s")
    ap.add_argument("--broker-signal", choices=["kill", "term"], default="kill",
                    help="how the broker is stopped at 1/3 of the run")
    ap.add_argument("--backend", default="cpu", help="service.backend: cpu, gpu or auto")
    ap.add_argument("--keep", action="store_true", help="keep the broker's data dir at the end")
    a = ap.parse_args()
    dir = tempfile.mkdtemp(prefix="isoflow-soak-")
    broker = Broker(dir, kc.LIBS)
    svc = Service(dir, f"127.0.0.1:{broker.port}", a.backend)
    print(f"work dir {dir}\nservice log {svc.log_path}\nbroker log {dir}/broker.log", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up as Ctrl-C does
    stop = threading.Event()
    try:
        ends, measured = run(a, dir, broker, svc, stop)
        return check(a, dir, broker, svc, ends, **measured)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        stop.set()
        for p in (svc.proc, broker.proc):
            if p and p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        if not a.keep:
            shutil.rmtree(f"{dir}/data", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
