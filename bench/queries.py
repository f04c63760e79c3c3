"""Queries on a 3-node cluster: local, forwarded, standby and batch reads, read-your-writes.

3 nodes in 3 zones, 1 standby, no read model. The events topic is filled with registrations
straight from a producer (keyed like the service does); once every node is ready, every
standby caught up and the last key of every partition readable, ``wrk`` (2 threads, Lua
scripts cycling through the paths) measures node 0's public port:

- ``GET /health/live`` at concurrency 32: the HTTP stack's own ceiling, measured in turn
  with the local reads, three times each (``--rounds``);
- ``GET /customers/{id}`` for ids whose partition is active on node 0 (local), active on
  another node (node 0 forwards), and with ``?consistency=any`` for ids whose partition has
  a standby on node 0 (served by that standby): rates at concurrency 32, latencies at 4;
- ``POST /customers:batchGet`` with 100 ids spread over all partitions, at concurrency 4.

Read-your-writes: 4 threads POST an event to node 1 and GET the aggregate from node 2 with
the position token of the 202; the GET's latency is what counts. Non-2xx answers and
socket errors are counted per measure and printed, never dropped. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from backbone.dev.cluster import wait_until

from _common import bake, machine
from _wrk import ms, wrk

SERVICE = "bench-queries"
PLURAL = "customers"
TOKEN = "bench-token"
ZONES = ["zone-a", "zone-b", "zone-c"]
BATCH = 100
ROLE_HEADER = "x-backbone-role"
SERVED_BY_HEADER = "x-backbone-served-by"


async def produce(brokers: str, keys: list[str], partitions: int) -> dict[int, str]:
    """Registers every key through the events topic; returns the last key of each partition."""
    from backbone.partitioning import partition_for

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{SERVICE}.events", partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=10)
    await producer.start()
    topic = f"{SERVICE}.events"
    encode = msgspec.json.encode
    last: dict[int, str] = {}
    try:
        sent = []
        for i, key in enumerate(keys):
            p = partition_for(key.encode(), partitions)
            body = {"type": "customer_registered", "name": f"C{i}", "email": f"c{i}@x.io"}
            sent.append(await producer.send(topic, encode(body), key=key.encode(), partition=p))
            last[p] = key
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return last


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class ReadYourWrites:
    """``threads`` clients: POST to ``writer``, then GET from ``reader`` with the token."""

    def __init__(self, writer: str, reader: str, keys: list[str], rounds: int, threads: int):
        self.writer, self.reader = writer, reader
        self.keys, self.rounds, self.threads = keys, rounds, threads
        self.latencies: list[float] = []
        self.failures: dict[str, int] = {}
        self.samples: dict[str, str] = {}
        self.stale = 0  # 200 but the answer lacks the points written before
        self.no_token = 0
        self.roles: dict[str, int] = {}  # who answered the GETs: active, standby
        self.lock = threading.Lock()

    def _fail(self, what: str, sample: str = "") -> None:
        with self.lock:
            self.failures[what] = self.failures.get(what, 0) + 1
            self.samples.setdefault(what, sample[:300])

    def _run(self, t: int) -> None:
        mine = self.keys[t :: self.threads]
        points = dict.fromkeys(mine, 0)  # each key's accepted points: the GET must show them
        with httpx.Client(timeout=10) as w, httpx.Client(timeout=10) as r:
            for n in range(self.rounds // self.threads):
                key = mine[n % len(mine)]
                try:
                    posted = w.post(
                        f"{self.writer}/{PLURAL}/{key}/events",
                        json={"type": "loyalty_points_earned", "points": 1},
                    )
                except httpx.HTTPError as exc:
                    self._fail(f"post {type(exc).__name__}")
                    continue
                if posted.status_code != 202:
                    self._fail(f"post {posted.status_code}", posted.text)
                    continue
                points[key] += 1
                token = posted.json().get("position")
                if token is None:
                    with self.lock:
                        self.no_token += 1
                    self._fail("post without position", posted.text)
                    continue
                started = time.perf_counter()
                try:
                    got = r.get(f"{self.reader}/{PLURAL}/{key}", params={"position": token})
                except httpx.HTTPError as exc:
                    self._fail(f"get {type(exc).__name__}")
                    continue
                took = time.perf_counter() - started
                if got.status_code != 200:
                    self._fail(f"get {got.status_code}", got.text)
                    continue
                if int(got.json().get("loyalty_points", -1)) < points[key]:
                    with self.lock:
                        self.stale += 1
                role = got.headers.get(ROLE_HEADER, "absent")
                with self.lock:
                    self.latencies.append(took)
                    self.roles[role] = self.roles.get(role, 0) + 1

    def run(self) -> None:
        threads = [threading.Thread(target=self._run, args=(t,)) for t in range(self.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def probe(url: str, paths: list[str], **extra: Any) -> dict[str, Any]:
    """Status codes and the role / served-by headers of a sample of GETs."""
    codes: dict[str, int] = {}
    roles: dict[str, int] = {}
    served: dict[str, int] = {}
    lags: list[int] = []
    sample = ""
    with httpx.Client(timeout=10) as client:
        for path in paths:
            got = client.get(f"{url}{path}", **extra)
            codes[str(got.status_code)] = codes.get(str(got.status_code), 0) + 1
            role = got.headers.get(ROLE_HEADER, "absent")
            roles[role] = roles.get(role, 0) + 1
            by = got.headers.get(SERVED_BY_HEADER, "absent")
            served[by] = served.get(by, 0) + 1
            lag = got.headers.get("x-backbone-lag")
            if lag is not None and lag.isdigit():
                lags.append(int(lag))
            if got.status_code != 200 and not sample:
                sample = f"{path}: {got.text[:300]}"
    found: dict[str, Any] = {"codes": codes, "roles": roles, "served_by": served}
    if lags:
        found["max_lag"] = max(lags)
    if sample:
        found["sample"] = sample
    return found


def merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several wrk runs of one measure as one: their requests over their time, counts summed,
    the median p50 and the worst p99."""
    found = dict(runs[-1])
    for name in ("requests", "duration_us", "non2xx", "socket_errors", "errors"):
        found[name] = sum(r[name] for r in runs)
    found["rps"] = round(found["requests"] / (found["duration_us"] / 1e6), 1)
    found["p50_us"] = statistics.median(r["p50_us"] for r in runs)
    found["p99_us"] = max(r["p99_us"] for r in runs)
    found["max_us"] = max(r["max_us"] for r in runs)
    return found


def routing_bytes() -> tuple[int | None, str | None]:
    try:
        from assignment_size import routing_view_bytes  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, f"bench/assignment_size.py has no routing_view_bytes yet ({exc})"
    try:
        return int(routing_view_bytes(members=1200, partitions=3600)), None
    except Exception as exc:  # reported, not fatal: the cluster figures stand on their own
        return None, f"routing_view_bytes failed: {type(exc).__name__}: {exc}"


def bake_from(work: Path, template: str | None) -> Path:
    """The default service baked from this repo, or from ``template`` (e.g. an export of
    another commit: ``git archive HEAD | tar -x -C /tmp/snap``)."""
    if template is None:
        return bake(work)
    from cookiecutter.main import cookiecutter

    project = Path(cookiecutter(template, no_input=True, output_dir=str(work)))
    sys.path.insert(0, str(project / "src"))
    return project


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=3000)
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk measure")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--ryw-rounds", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32, help="for the rates")
    parser.add_argument("--latency-concurrency", type=int, default=4, help="for latencies")
    parser.add_argument("--rounds", type=int, default=3, help="alternating live and local measures")
    parser.add_argument("--template", help="bake from this template dir instead of this repo")
    args = parser.parse_args()
    began = time.monotonic()
    partitions = args.partitions
    keys = [f"c-{i}" for i in range(args.keys)]
    rate_c, lat_c, duration = args.concurrency, args.latency_concurrency, args.duration
    results: dict[str, dict[str, Any]] = {}
    rounds: dict[str, list[dict[str, Any]]] = {}
    checks: dict[str, Any] = {}
    notes: list[str] = []
    ryw: ReadYourWrites | None = None
    placement: dict[str, list[int]] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(
        prefix="bench-queries-", dir=os.environ.get("BENCH_TMP")
    ) as tmp:
        work = Path(tmp)
        scripts = work / "wrk"
        scripts.mkdir()
        project = bake_from(work, args.template)
        from backbone.dev.cluster import NodeProcess
        from backbone.dev.localkafka import LocalKafka
        from backbone.partitioning import partition_for

        by_partition: dict[int, list[str]] = {p: [] for p in range(partitions)}
        for key in keys:
            by_partition[partition_for(key.encode(), partitions)].append(key)

        with LocalKafka(work / "kafka", nodes=1) as kafka:
            last = asyncio.run(produce(kafka.brokers, keys, partitions))
            print(f"produced {len(keys)} registrations", file=sys.stderr)
            env = {
                "KAFKA_BOOTSTRAP_SERVERS": kafka.brokers,
                "SERVICE_NAME": SERVICE,
                "PARTITIONS": str(partitions),
                "STANDBY_REPLICAS": "1",
                "PYTHONPATH": str(project / "src"),
                "INTERNAL_TOKEN": TOKEN,
                "ADMIN_TOKEN": TOKEN,
                "READ_MODEL": "off",
                "LOG_LEVEL": "warning",
            }
            nodes = [
                NodeProcess("customer_backbone", f"node-{i}", work, {**env, "ZONE": ZONES[i]})
                for i in range(3)
            ]
            try:
                for n in nodes:
                    n.start()
                for n in nodes:
                    n.wait_ready(timeout=120)

                def settled() -> dict[str, Any] | None:
                    statuses = [n.status() or {} for n in nodes]
                    if not all(s.get("ready") for s in statuses):
                        return None
                    actives = sorted(p for s in statuses for p in s.get("active", []))  # type: ignore[attr-defined]
                    standbys = [p for s in statuses for p in s.get("standby", [])]  # type: ignore[attr-defined]
                    if actives != list(range(partitions)) or len(standbys) != partitions:
                        return None
                    for s in statuses:  # every standby has read its changelog to the end
                        lags = s.get("standby_lag", {})
                        if any(lags.get(str(p)) != 0 for p in s.get("standby", [])):  # type: ignore[attr-defined,union-attr]
                            return None
                    view = httpx.get(
                        f"{nodes[0].url}/admin/assignment",
                        headers={"authorization": f"Bearer {TOKEN}"},
                        timeout=5,
                    ).json()
                    group: dict[str, Any] = view["group"]
                    if len(group["partitions"]) != partitions:
                        return None
                    for i, s in enumerate(statuses):  # node 0's view agrees with every node
                        name = nodes[i].name
                        held = {
                            int(p)
                            for p, r in group["partitions"].items()
                            if r["active"]["node"] == name
                        }
                        if held != set(s.get("active", [])):  # type: ignore[call-overload]
                            return None
                    return group

                group = wait_until(settled, 180, "the cluster to settle", every=0.5)

                def readable() -> bool:
                    with httpx.Client(timeout=5) as client:
                        for key in last.values():
                            for n in nodes:
                                if client.get(f"{n.url}/{PLURAL}/{key}").status_code != 200:
                                    return False
                    return True

                wait_until(readable, 180, "every partition's last key on every node", 0.5)
                print(f"cluster ready after {time.monotonic() - began:.0f}s", file=sys.stderr)

                me = nodes[0].name
                local = [
                    k
                    for p, r in group["partitions"].items()
                    if r["active"]["node"] == me
                    for k in by_partition[int(p)]
                ]
                forwarded = [
                    k
                    for p, r in group["partitions"].items()
                    if r["active"]["node"] != me
                    for k in by_partition[int(p)]
                ]
                standby = [
                    k
                    for p, r in group["partitions"].items()
                    if any(s["node"] == me for s in r["standbys"])
                    for k in by_partition[int(p)]
                ]
                for n in nodes:  # every node's share: a skew shows in the rates
                    placement[f"{n.name}_active"] = sorted(
                        int(p)
                        for p, r in group["partitions"].items()
                        if r["active"]["node"] == n.name
                    )
                    placement[f"{n.name}_standby"] = sorted(
                        int(p)
                        for p, r in group["partitions"].items()
                        if any(s["node"] == n.name for s in r["standbys"])
                    )
                print(f"placement: {placement}", file=sys.stderr)
                if not local or not forwarded or not standby:
                    raise RuntimeError(f"node 0 lacks a kind of partition: {placement}")

                def gets(ids: list[str], query: str = "") -> list[tuple[str, str]]:
                    return [(f"/{PLURAL}/{k}{query}", "") for k in ids]

                # What each kind of read is served by, before it is measured.
                def sample(ids: list[str], query: str = "") -> list[str]:
                    return [p for p, _ in gets(ids[:: max(1, len(ids) // 60)], query)]

                checks["local"] = probe(nodes[0].url, sample(local))
                checks["forwarded"] = probe(nodes[0].url, sample(forwarded))
                any_paths = sample(standby, "?consistency=any")
                checks["standby"] = probe(nodes[0].url, any_paths)
                roles = checks["standby"]["roles"]
                if roles.get("standby", 0) != sum(roles.values()):
                    notes.append(
                        f"consistency=any reads were not all served by a standby: roles {roles}"
                    )

                # 100 ids spread over all partitions, a few different batches in a cycle.
                batches = []
                per = max(1, BATCH // partitions)
                for b in range(20):
                    ids: list[str] = []
                    for p in range(partitions):
                        pool = by_partition[p]
                        ids.extend(pool[(b * per + j) % len(pool)] for j in range(per))
                    taken = set(ids)
                    spare = [k for k in keys if k not in taken]
                    ids.extend(spare[b * 7 % len(spare) :][: BATCH - len(ids)])
                    batches.append((f"/{PLURAL}:batchGet", json.dumps({"ids": ids[:BATCH]})))
                try:
                    answer = httpx.post(
                        f"{nodes[0].url}/{PLURAL}:batchGet",
                        content=batches[0][1],
                        headers={"content-type": "application/json"},
                        timeout=10,
                    )
                    body = answer.json() if answer.status_code == 200 else {}
                    checks["batch"] = {
                        "status": answer.status_code,
                        "items": len(body.get("items", {})),
                        "missing": len(body.get("missing", [])),
                        "failed": len(body.get("failed", {})),
                    }
                    if answer.status_code != 200:
                        checks["batch"]["sample"] = answer.text[:300]
                except httpx.HTTPError as exc:
                    checks["batch"] = {"error": f"{type(exc).__name__}: {exc}"}
                batch_ready = checks["batch"].get("status") == 200
                if not batch_ready:
                    notes.append(f"batchGet is not available: {checks['batch']}")

                live = [("/health/live", "")]
                run = {"duration": duration, "scripts": scripts}
                url = nodes[0].url
                wrk(url, gets(local), connections=lat_c, name="warmup", **run)
                # The ceiling and the local reads alternate: the machine's drift between two
                # measures would otherwise decide their ratio.
                measures = (("live", live), ("local", gets(local)))
                rounds.update((name, []) for name, _ in measures)
                for _ in range(args.rounds):
                    for name, paths in measures:
                        rounds[name].append(wrk(url, paths, connections=rate_c, name=name, **run))
                results["live"], results["local"] = merged(rounds["live"]), merged(rounds["local"])
                results["local_c4"] = wrk(
                    url, gets(local), connections=lat_c, name="local_c4", **run
                )
                results["forwarded"] = wrk(
                    url, gets(forwarded), connections=rate_c, name="forwarded", **run
                )
                results["forwarded_c4"] = wrk(
                    url, gets(forwarded), connections=lat_c, name="forwarded_c4", **run
                )
                # The owner's internal endpoint asked directly, as node 0 asks it: what
                # forwarding costs beyond the owner's own answer.
                owner = nodes[1]
                owned = [
                    k
                    for p, r in group["partitions"].items()
                    if r["active"]["node"] == owner.name
                    for k in by_partition[int(p)]
                ]
                results["owner_internal"] = wrk(
                    owner.internal_url,
                    [(f"/internal/aggregates/{k}", "") for k in owned],
                    connections=rate_c,
                    name="owner_internal",
                    headers={"authorization": f"Bearer {TOKEN}"},
                    **run,
                )
                results["standby"] = wrk(
                    url,
                    gets(standby, "?consistency=any"),
                    connections=rate_c,
                    name="standby",
                    **run,
                )
                if batch_ready:
                    results["batch100_c4"] = wrk(
                        url,
                        batches,
                        connections=lat_c,
                        name="batch100_c4",
                        method="POST",
                        headers={"content-type": "application/json"},
                        **run,
                    )

                ryw = ReadYourWrites(nodes[1].url, nodes[2].url, keys, args.ryw_rounds, lat_c)
                ryw.run()
                print(
                    f"ryw: {len(ryw.latencies)} rounds, failures {ryw.failures}",
                    file=sys.stderr,
                )
                if ryw.no_token:
                    notes.append("the 202 of a POST has no position token yet")
                for n in nodes:
                    if not n.alive():
                        raise RuntimeError(f"{n.name} exited:\n{n.log_tail()}")
            except BaseException:
                for n in nodes:
                    print(f"--- {n.name} log tail:\n{n.log_tail(30)}", file=sys.stderr)
                raise
            finally:
                for n in nodes:
                    n.stop()
    routing, why = routing_bytes()
    if why:
        notes.append(why)

    def rps(name: str) -> float | None:
        return results[name]["rps"] if name in results else None

    def p(name: str, q: str) -> float | None:
        return ms(results[name][q]) if name in results else None

    ryw_p99 = None
    if ryw is not None and ryw.latencies:
        ryw_p99 = round(percentile(ryw.latencies, 0.99) * 1000, 2)
    result: dict[str, Any] = {
        "live_rps": rps("live"),
        "local_rps": rps("local"),
        "local_p50_ms": p("local_c4", "p50_us"),
        "local_p99_ms": p("local_c4", "p99_us"),
        "forwarded_rps": rps("forwarded"),
        "forwarded_p99_ms": p("forwarded_c4", "p99_us"),
        "standby_rps": rps("standby"),
        "batch100_p99_ms": p("batch100_c4", "p99_us"),
        "ryw_p99_ms": ryw_p99,
        "routing_bytes_per_node_1200_members": routing,
    }
    live_rps, local_rps = result["live_rps"], result["local_rps"]
    result["owner_internal_rps"] = rps("owner_internal")
    result["local_to_live"] = round(local_rps / live_rps, 3) if live_rps and local_rps else None
    result["rounds_rps"] = {name: [r["rps"] for r in runs] for name, runs in rounds.items()}

    def below(value: float | None, bound: float) -> bool | None:
        return None if value is None else value < bound

    result["targets"] = {
        "local_rps_ge_80pct_live": None
        if result["local_to_live"] is None
        else result["local_to_live"] >= 0.8,
        "local_p99_under_5ms": below(result["local_p99_ms"], 5),
        "forwarded_p99_under_15ms": below(result["forwarded_p99_ms"], 15),
        "batch100_p99_under_25ms": below(result["batch100_p99_ms"], 25),
    }
    result["errors"] = {
        name: {"non2xx": r["non2xx"], "socket": r["socket_errors"], "requests": r["requests"]}
        for name, r in results.items()
    }
    if ryw is not None:
        result["errors"]["ryw"] = {
            "failed": ryw.failures,
            "stale": ryw.stale,
            "ok": len(ryw.latencies),
        }
        result["ryw_served_by_role"] = ryw.roles
        result["ryw_p50_ms"] = (
            round(statistics.median(ryw.latencies) * 1000, 2) if ryw.latencies else None
        )
        if ryw.samples:
            result["ryw_failure_samples"] = ryw.samples
    with_errors = sorted(name for name, r in results.items() if r["errors"])
    if with_errors:
        notes.append(f"measures with errors (their figures include them): {with_errors}")
    result["latency_ms"] = {
        name: {q: ms(r[f"{q}_us"]) for q in ("p50", "p90", "p99", "max")}
        for name, r in results.items()
    }
    result["served"] = checks
    result["placement"] = placement
    result["keys"] = len(keys)
    result["partitions"] = partitions
    result["duration_s"] = duration
    result["concurrency"] = {"rates": rate_c, "latencies": lat_c}
    result["loadavg_1m_before"] = round(load_before, 2)
    result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    result["run_s"] = round(time.monotonic() - began, 1)
    result["notes"] = notes
    result["machine"] = machine()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
