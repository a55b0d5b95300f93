#!/usr/bin/env python3
"""Smoke check of the Apache Kafka test broker that scripts/kafka.sh fetches.

Formats a fresh KRaft dir, starts a combined broker+controller node on free
loopback ports, creates a 3-partition topic, produces 100 records, consumes
them in a group with commits, stops the node (SIGTERM, then once more with
SIGKILL), restarts it on the same dir and checks that the records and the
committed offsets survived. Needs confluent-kafka.

    python3 scripts/kafka_check.py [LIBS]   # LIBS: default `scripts/kafka.sh`
"""
import os, signal, socket, subprocess, sys, tempfile, time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBS = sys.argv[1] if len(sys.argv) > 1 else subprocess.check_output(
    [os.path.join(ROOT, "scripts/kafka.sh")], text=True).strip()
JAVA = ["java", "-Xmx512m", "-Xms128m", "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Dorg.apache.logging.log4j.level=INFO", "-cp", os.path.join(LIBS, "*")]
CLUSTER_ID = "WgiTsZZtRReqwPEpVw0g7Q"  # any StorageTool random-uuid will do


def client(**kw):
    """Client settings: the node's address, and no log of refused connects."""
    return {"bootstrap.servers": f"127.0.0.1:{PORT}", "log_level": 2, **kw}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(dir, port, cport):
    """The test node's configuration (scripts/kafka-test.properties, shared
    with tests/util/mod.rs) for client port `port`, controller port `cport`."""
    with open(os.path.join(ROOT, "scripts/kafka-test.properties")) as f:
        text = f.read()
    return (text.replace("{port}", str(port)).replace("{controller}", str(cport))
            .replace("{dir}", str(dir)))


def start(dir, log):
    t0 = time.time()
    p = subprocess.Popen(JAVA + ["kafka.Kafka", f"{dir}/server.properties"],
                         stdout=log, stderr=log)
    admin = AdminClient(client())
    while True:
        assert p.poll() is None, "broker exited; see its log"
        try:
            admin.list_topics(timeout=1)
            break
        except Exception:
            time.sleep(0.05)
    print(f"started in {time.time() - t0:.1f}s")
    return p, admin


def consume(group, want, commit, wait=60):
    c = Consumer(client(**{"group.id": group, "auto.offset.reset": "earliest",
                           "enable.auto.commit": False}))
    c.subscribe(["check"])
    got, deadline = [], time.time() + wait
    while len(got) < want and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.value())
    if commit and got:
        c.commit(asynchronous=False)
    c.close()
    return got


PORT = free_port()


def main():
    dir = tempfile.mkdtemp(prefix="isoflow-kafka-")
    port, cport = PORT, free_port()
    with open(f"{dir}/server.properties", "w") as f:
        f.write(config(dir, port, cport))
    subprocess.run(JAVA + ["kafka.tools.StorageTool", "format", "-t", CLUSTER_ID,
                           "-c", f"{dir}/server.properties"],
                   check=True, stdout=subprocess.DEVNULL)
    log = open(f"{dir}/broker.log", "ab")
    p, admin = start(dir, log)
    for f in admin.create_topics([NewTopic("check", 3, 1)]).values():
        f.result()
    prod = Producer(client())
    for i in range(100):
        prod.produce("check", value=b"%d" % i, key=b"%d" % i)
    assert prod.flush(30) == 0
    got = consume("g", 100, commit=True)
    assert sorted(got) == sorted(b"%d" % i for i in range(100)), len(got)
    for how in (signal.SIGTERM, signal.SIGKILL):
        t0 = time.time()
        p.send_signal(how)
        p.wait(60)
        print(f"{how.name}: exited in {time.time() - t0:.1f}s")
        p, admin = start(dir, log)
        parts = [TopicPartition("check", i) for i in range(3)]
        c = Consumer(client(**{"group.id": "g"}))
        committed = sum(tp.offset for tp in c.committed(parts, timeout=30))
        c.close()
        assert committed == 100, committed
        assert len(consume("g2", 100, commit=False)) == 100
        assert consume("g", 1, commit=False, wait=5) == []  # nothing past the commit
        print(f"after {how.name}: 100 records and offsets (sum {committed}) kept")
    p.terminate()
    p.wait(60)
    print("ok", dir)


if __name__ == "__main__":
    main()
