"""Live split of one node's state: 2M aggregates (~1 GB) in 12 partitions, split to 24
while a steady HTTP load writes and reads.

The events topic is filled with registrations straight from a producer (keyed like the
service does), one node (no standby, no read model) applies them all; then writer and reader
threads run at a fixed rate while ``repartition --partitions 24`` runs. Pauses are the
longest gaps between consecutive successful writes (and reads) of all threads together;
lost and doubled events compare, once the load stops, each written key's order count with
the 202s its writers got. Replay and network figures come from the node's log events after
its generation switch. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from backbone.dev.cluster import wait_until

from _common import bake, machine

SERVICE = "bench-repartition"
TOKEN = "bench-token"
PLURAL = "customers"


def padded(i: int, value_bytes: int) -> dict[str, str]:
    """A registration whose aggregate encodes to about ``value_bytes`` (random, so that the
    store does not compress it away): the name takes up to 200 characters, the email the rest."""
    pad = max(value_bytes - 80, 8)
    noise = base64.b64encode(os.urandom(pad)).decode()[:pad]
    name_len = min(pad, 190)
    email_len = min(max(pad - name_len, 1), 300)
    return {
        "type": "customer_registered",
        "name": f"C{i} {noise[:name_len]}",
        "email": f"{noise[name_len : name_len + email_len] or 'x'}@example.com",
    }


async def produce(brokers: str, aggregates: int, value_bytes: int, partitions: int) -> int:
    """Registers ``aggregates`` customers c-0.. through the events topic; returns its bytes."""
    from backbone.partitioning import partition_for

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    await admin.create_topics([NewTopic(f"{SERVICE}.events", partitions, 1)])
    await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=brokers, acks=1, linger_ms=20, max_batch_size=1024 * 1024
    )
    await producer.start()
    encode = msgspec.json.encode
    topic = f"{SERVICE}.events"
    batches = {p: producer.create_batch() for p in range(partitions)}
    pending = []
    total = 0
    for i in range(aggregates):
        key, value = f"c-{i}".encode(), encode(padded(i, value_bytes))
        total += len(key) + len(value)
        p = partition_for(key, partitions)
        if batches[p].append(key=key, value=value, timestamp=None) is None:
            pending.append(await producer.send_batch(batches[p], topic, partition=p))
            batches[p] = producer.create_batch()
            batches[p].append(key=key, value=value, timestamp=None)
    for p, batch in batches.items():
        if batch.record_count():
            pending.append(await producer.send_batch(batch, topic, partition=p))
    await asyncio.gather(*pending)
    await producer.stop()
    return total


def tree_bytes(path: Path) -> int:
    """What ``du -sb`` says: the bytes of every file under ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            # a RocksDB file may be removed by a compaction meanwhile
            with contextlib.suppress(FileNotFoundError):
                total += (Path(root) / name).stat().st_size
    return total


class Load:
    """Writer and reader threads at a fixed total rate over a fixed set of keys. Keeps each
    key's accepted orders (count, cents) and the time of every success and failure."""

    def __init__(self, url: str, keys: list[str], writers: int, readers: int, rate: float) -> None:
        self.url = url
        self.keys = keys
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.accepted: dict[str, list[int]] = {k: [0, 0] for k in keys}
        self.write_ok: list[float] = []
        self.read_ok: list[float] = []
        self.write_refused = 0  # 503 while writes are paused
        self.write_failed = 0  # any other answer or a transport error before sending
        self.write_unknown = 0  # sent but unanswered: may or may not have been accepted
        self.read_failed = 0
        self.failures: dict[str, int] = {}
        self.windows: dict[str, list[float]] = {}  # kind: [first, last] (monotonic)
        self.samples: dict[str, str] = {}  # kind: one answer's body
        self.threads = [
            threading.Thread(target=self._write, args=(t, writers, rate / writers), daemon=True)
            for t in range(writers)
        ] + [
            threading.Thread(target=self._read, args=(t, readers, rate / readers), daemon=True)
            for t in range(readers)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _note(self, what: str, sample: str = "") -> None:
        now = time.monotonic()
        with self.lock:
            self.failures[what] = self.failures.get(what, 0) + 1
            self.windows.setdefault(what, [now, now])[1] = now
            self.samples.setdefault(what, sample[:300])

    def _pace(self, started: float, n: int, rate: float) -> None:
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _write(self, t: int, of: int, rate: float) -> None:
        mine = self.keys[t::of]
        n = 0
        started = time.monotonic()
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                key = mine[n % len(mine)]
                amount = 1 + n % 97
                body = {"type": "order_placed", "order_id": f"w{t}-{n}", "amount_cents": amount}
                n += 1
                try:
                    answer = client.post(f"{self.url}/{PLURAL}/{key}/events", json=body)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    self.write_failed += 1
                    self._note(f"write {type(exc).__name__}")
                    time.sleep(0.05)
                    continue
                except httpx.TransportError as exc:
                    self.write_unknown += 1
                    self._note(f"write {type(exc).__name__}")
                    continue
                if answer.status_code == 202:
                    now = time.monotonic()
                    with self.lock:
                        self.accepted[key][0] += 1
                        self.accepted[key][1] += amount
                        self.write_ok.append(now)
                elif answer.status_code == 503:
                    self.write_refused += 1
                    self._note("write 503")
                    time.sleep(0.05)  # not Retry-After (1 s): the pause is measured finer
                else:
                    self.write_failed += 1
                    self._note(f"write {answer.status_code}", answer.text)
                self._pace(started, n, rate)

    def _read(self, t: int, of: int, rate: float) -> None:
        mine = self.keys[t::of]
        n = 0
        started = time.monotonic()
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                key = mine[n % len(mine)]
                n += 1
                text = ""
                try:
                    answer = client.get(f"{self.url}/{PLURAL}/{key}")
                    code: int | str = answer.status_code
                    text = f"{key}: {answer.text}"
                except httpx.TransportError as exc:
                    code = type(exc).__name__
                if code == 200:
                    with self.lock:
                        self.read_ok.append(time.monotonic())
                else:
                    self.read_failed += 1
                    self._note(f"read {code}", text)
                    time.sleep(0.02)
                self._pace(started, n, rate)


def longest_gap(times: list[float], begin: float, end: float) -> float:
    """The longest stretch in [begin, end] without a success (its ends count as successes
    only if one happened there: a window with none is one long gap)."""
    inside = sorted(t for t in times if begin <= t <= end)
    marks = [begin, *inside, end]
    return max(b - a for a, b in itertools.pairwise(marks))


def log_events(path: Path) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--aggregates", type=int, default=2_000_000)
    parser.add_argument("--value-bytes", type=int, default=450)
    parser.add_argument("--from", dest="source", type=int, default=12)
    parser.add_argument("--to", dest="target", type=int, default=24)
    parser.add_argument("--keys", type=int, default=200, help="keys the load writes and reads")
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=200, help="writes/s (and reads/s) in all")
    parser.add_argument("--timeout", type=float, default=900, help="for the repartition")
    args = parser.parse_args()
    keys = [f"c-{i}" for i in range(min(args.keys, args.aggregates))]
    with tempfile.TemporaryDirectory(
        prefix="bench-repartition-", dir=os.environ.get("BENCH_TMP")
    ) as tmp:
        work = Path(tmp)
        project = bake(work)
        from backbone.dev.cluster import NodeProcess
        from backbone.dev.localkafka import LocalKafka

        with LocalKafka(work / "kafka", nodes=1) as kafka:
            started = time.monotonic()
            produced = asyncio.run(
                produce(kafka.brokers, args.aggregates, args.value_bytes, args.source)
            )
            print(
                f"produced {args.aggregates} registrations ({produced / 1e9:.2f} GB) "
                f"in {time.monotonic() - started:.0f}s",
                file=sys.stderr,
            )
            node = NodeProcess(
                "customer_backbone",
                "node-a",
                work,
                {
                    "KAFKA_BOOTSTRAP_SERVERS": kafka.brokers,
                    "SERVICE_NAME": SERVICE,
                    "PARTITIONS": str(args.source),
                    "STANDBY_REPLICAS": "0",
                    "PYTHONPATH": str(project / "src"),
                    "READ_MODEL": "off",
                    "INTERNAL_TOKEN": TOKEN,
                    "ZONE": "zone-a",
                    "LOG_LEVEL": "info",
                },
            )
            load = Load(node.url, keys, args.writers, args.readers, args.rate)
            node.start()
            try:
                node.wait_ready(timeout=300)

                def processed() -> int:
                    status: dict[str, Any] = node.status() or {}
                    return int(status.get("processed", 0)) + int(status.get("dead_letters", 0))

                loaded = time.monotonic()
                wait_until(
                    lambda: processed() >= args.aggregates, 3600, "the registrations", 0.5, [node]
                )
                dead_letters = int((node.status() or {}).get("dead_letters", 0))  # type: ignore[call-overload]
                print(
                    f"node applied them in {time.monotonic() - loaded:.0f}s",
                    file=sys.stderr,
                )
                state_bytes = tree_bytes(node.data_dir / "customer" / "g0")

                load.start()
                time.sleep(5)  # a steady load before the change
                print(f"repartition {args.source} -> {args.target}", file=sys.stderr)
                lines: list[str] = []
                began, began_wall = time.monotonic(), time.time()
                command = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "customer_backbone",
                        "repartition",
                        "--partitions",
                        str(args.target),
                        "--timeout",
                        str(args.timeout),
                    ],
                    env=node.env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                assert command.stdout is not None
                for line in command.stdout:
                    lines.append(line.rstrip())
                    print(f"  {line.rstrip()[:300]}", file=sys.stderr)
                code = command.wait()
                command_s = time.monotonic() - began
                if code != 0:
                    raise RuntimeError(
                        f"repartition exited {code}:\n"
                        + "\n".join(lines[-20:])
                        + f"\nnode log:\n{node.log_tail(60)}"
                    )
                last = json.loads(lines[-1])
                if last.get("generation") != 1:
                    raise RuntimeError(f"repartition ended at {last!r}")

                def switched() -> bool:
                    status = node.status() or {}
                    return bool(status.get("ready")) and status.get("generation") == 1

                wait_until(switched, 300, "generation 1 ready", every=0.05)
                total_s = time.monotonic() - began
                time.sleep(5)  # and a steady load after it
                load.join()
                ended = time.monotonic()
                view = httpx.get(
                    f"{node.internal_url}/internal/repartition",
                    headers={"authorization": f"Bearer {TOKEN}"},
                    timeout=5,
                ).json()
                print(f"internal view: {json.dumps(view)[:1000]}", file=sys.stderr)

                # Caught up: every key shows what its writers were told was accepted, or
                # nothing has moved for 10 s.
                def read_all() -> dict[str, list[int]]:
                    seen = {}
                    with httpx.Client(timeout=10) as client:
                        for key in keys:
                            answer = client.get(f"{node.url}/{PLURAL}/{key}")
                            if answer.status_code != 200:
                                seen[key] = [-1, -1]
                                continue
                            body = answer.json()
                            seen[key] = [
                                int(body["order_count"]),
                                int(body["lifetime_value_cents"]),
                            ]
                    return seen

                seen = read_all()
                stable_since = time.monotonic()
                deadline = time.monotonic() + 180
                while seen != load.accepted and time.monotonic() < deadline:
                    if time.monotonic() - stable_since > 10:
                        break
                    time.sleep(0.5)
                    now = read_all()
                    if now != seen:
                        seen, stable_since = now, time.monotonic()
                events = log_events(node.log_path)
                for kind, body in load.samples.items():
                    print(f"{kind}: e.g. {body}", file=sys.stderr)
            finally:
                load.stop.set()
                node.stop()

    lost = doubled = value_mismatch = unreadable = 0
    for key, (count, cents) in load.accepted.items():
        got_count, got_cents = seen[key]
        if got_count < 0:
            unreadable += 1
            continue
        lost += max(count - got_count, 0)
        doubled += max(got_count - count, 0)
        value_mismatch += got_cents != cents
    switch_at = next(
        (i for i, e in enumerate(events) if e.get("event") == "generation_switch"), len(events)
    )
    after = events[switch_at:]
    restores = [e for e in after if e.get("event") == "restore_finished"]
    boots = [e for e in after if e.get("event") == "bootstrap_finished"]
    derived = [e for e in events if e.get("event") == "repartition_derived"]
    named = {e.get("event"): e for e in events}  # the last of each
    first: dict[Any, dict[str, Any]] = {}
    for e in events:
        first.setdefault(e.get("event"), e)

    def between(a: str, b: str) -> float | None:
        if a in first and b in named:
            return round(stamp(named[b]) - stamp(first[a]), 3)
        return None

    result = {
        "state_bytes": state_bytes,
        "from": args.source,
        "to": args.target,
        "total_s": round(total_s, 2),
        "max_write_pause_s": round(longest_gap(load.write_ok, began, began + total_s), 3),
        "max_read_pause_s": round(longest_gap(load.read_ok, began, began + total_s), 3),
        "replayed_records": sum(int(e.get("records", 0)) for e in restores),
        "network_bytes": sum(int(e.get("bytes", 0)) for e in boots),
        "events_lost": lost,
        "events_doubled": doubled,
        "aggregates": args.aggregates,
        "events_bytes": produced,
        "dead_letters": dead_letters,
        "command_s": round(command_s, 2),
        "barrier_to_switched_s": between("repartition_barrier", "generation_switched"),
        "derive_s": max((float(e["seconds"]) for e in derived), default=None),
        "derive_s_sum": round(sum(float(e["seconds"]) for e in derived), 3),
        "derived_keys": sum(int(e.get("keys", 0)) for e in derived),
        "derived_bytes": sum(int(e.get("bytes", 0)) for e in derived),
        "timeline_s": {
            name: round(stamp(found[name]) - began_wall, 3)
            for name, found in (
                ("repartition_barrier", first),
                ("repartition_drained", named),
                ("repartition_derived", named),
                ("generation_switch", first),
                ("generation_switched", named),
            )
            if name in found
        },
        "switch_s": between("generation_switch", "generation_switched"),
        "restored_partitions_after_switch": len(restores),
        "bootstraps_after_switch": len(boots),
        "max_write_pause_load_s": round(longest_gap(load.write_ok, began - 5, ended), 3),
        "max_read_pause_load_s": round(longest_gap(load.read_ok, began - 5, ended), 3),
        "writes_accepted": len(load.write_ok),
        "writes_refused_503": load.write_refused,
        "writes_failed": load.write_failed,
        "writes_unknown": load.write_unknown,
        "reads_ok": len(load.read_ok),
        "reads_failed": load.read_failed,
        "failures": load.failures,
        "failure_windows_s": {
            k: [round(a - began, 3), round(b - began, 3)] for k, (a, b) in load.windows.items()
        },
        "value_mismatch_keys": value_mismatch,
        "unreadable_keys": unreadable,
        "load_keys": len(keys),
        **machine(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
