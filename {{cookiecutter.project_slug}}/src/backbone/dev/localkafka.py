"""A real local Apache Kafka cluster (KRaft, 1 or 3 nodes on 127.0.0.1) for tests, demo, benchmarks.

    python -m backbone.dev.localkafka start [--nodes 1|3] [--sasl-ssl] [--dir .kafka] [--timeout 90]
    python -m backbone.dev.localkafka address [--dir .kafka]
    python -m backbone.dev.localkafka stop [--dir .kafka] [--wipe]
    python -m backbone.dev.localkafka jars

Jars come from Maven Central and are cached in $BACKBONE_KAFKA_CACHE/kafka-<version>/lib
(default ~/.cache/backbone); the version is $BACKBONE_KAFKA_VERSION (default 4.1.1).

``--sasl-ssl`` adds a SASL_SSL listener on each broker: a CA and a broker certificate made
with ``openssl`` at start, and one user (SCRAM-SHA-512 and PLAIN) with a random password;
``cluster.json`` names the port, the CA file and the credentials. The PLAINTEXT listener
stays, for the brokers among themselves and for local tools.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import DEVNULL, PIPE, STDOUT, Popen, run
from typing import IO, Self, TypedDict

from aiokafka.client import AIOKafkaClient  # type: ignore[import-untyped,unused-ignore]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped,unused-ignore]

from backbone.dev.ports import free_ports

DEFAULT_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
STOP_GRACE_S = 20.0

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.backbone</groupId><artifactId>kafka-jars</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_SERVER = """process.roles=broker,controller
node.id={id}
controller.quorum.voters={voters}
listeners={listeners},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners={listeners}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
log.dirs={dir}/data
offsets.topic.replication.factor={n}
transaction.state.log.replication.factor={n}
transaction.state.log.min.isr={min_isr}
default.replication.factor={n}
min.insync.replicas=1
num.partitions=1
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
log.retention.check.interval.ms=5000
log.segment.delete.delay.ms=1000
"""

_SASL_SSL = """sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
  org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=\
  org.apache.kafka.common.security.plain.PlainLoginModule required user_{user}="{password}";
ssl.keystore.type=PKCS12
ssl.keystore.location={pki}/broker.p12
ssl.keystore.password={store_password}
ssl.key.password={store_password}
"""

SASL_USER = "backbone"

_LOG4J = """rootLogger.level=WARN
rootLogger.appenderRef.f.ref=F
appender.f.type=File
appender.f.name=F
appender.f.fileName={file}
appender.f.layout.type=PatternLayout
appender.f.layout.pattern=[%d] %p %m (%c)%n
"""


class LocalKafkaError(RuntimeError):
    pass


class _Node(TypedDict):
    id: int
    port: int
    secure_port: int  # SASL_SSL; 0 without
    controller_port: int
    pid: int


class SaslSsl(TypedDict):
    """How a client reaches the SASL_SSL listeners."""

    brokers: str
    ca_file: str
    username: str
    password: str


class _State(TypedDict):
    brokers: str
    cluster_id: str
    version: str
    nodes: list[_Node]
    sasl_ssl: SaslSsl | None


def _say(msg: str) -> None:
    print(f"localkafka: {msg}", file=sys.stderr, flush=True)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()[-lines:])


def _version(version: str | None) -> str:
    return version or os.environ.get("BACKBONE_KAFKA_VERSION") or DEFAULT_VERSION


def check_java() -> None:
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError("`java` is not on PATH: Kafka needs Java 17 or newer")
    out = run([java, "-version"], check=False, capture_output=True, text=True).stderr
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(m[1]) if m else 0
    if m and major == 1 and m[2]:  # Java 8 and older report "1.8"
        major = int(m[2])
    if major < 17:
        raise LocalKafkaError(f"Kafka needs Java 17 or newer; `java -version` says:\n{out}")


def ensure_jars(version: str | None = None) -> Path:
    """Fetch Kafka's jars (and a log4j binding) with Maven unless cached; return the lib dir."""
    version = _version(version)
    root = Path(os.environ.get("BACKBONE_KAFKA_CACHE") or Path.home() / ".cache" / "backbone")
    cache = root / f"kafka-{version}"
    lib, marker = cache / "lib", cache / "lib" / ".complete"
    pom = _POM.format(kafka=version, log4j=LOG4J_VERSION)
    # The marker holds the pom, so a changed pom or an interrupted copy is fetched again.
    if marker.is_file() and marker.read_text() == pom:
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs must not copy into lib at once
        if marker.is_file() and marker.read_text() == pom:
            return lib
        check_java()
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LocalKafkaError("`mvn` is not on PATH: install Maven 3 to fetch Kafka's jars")
        shutil.rmtree(lib, ignore_errors=True)
        (cache / "pom.xml").write_text(pom)
        _say(f"fetching Kafka {version} jars with Maven into {lib}")
        cmd = [mvn, "-q", "-B", "-f", str(cache / "pom.xml"), "dependency:copy-dependencies"]
        cmd.append(f"-DoutputDirectory={lib}")
        r = run(cmd, check=False, capture_output=True, text=True)
        if r.returncode != 0:
            raise LocalKafkaError(
                f"Maven failed (exit {r.returncode}) to fetch org.apache.kafka:kafka_2.13:{version}"
                f" into {lib}. Check that the version exists, that Maven Central is reachable,"
                f" and that `mvn` and Java 17+ are on PATH. Maven's output ends:\n"
                + _tail(r.stdout + r.stderr)
            )
        marker.write_text(pom)
    return lib


def _cluster_id() -> str:
    # Kafka's Uuid text form; generated here to save a JVM start of `StorageTool random-uuid`.
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _openssl(*args: str, cwd: Path) -> None:
    done = run(["openssl", *args], cwd=cwd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise LocalKafkaError(f"`openssl {args[0]}` failed:\n{_tail(done.stderr)}")


def make_pki(directory: Path, store_password: str) -> None:
    """ca.pem, and broker.p12: the brokers' key and certificate for 127.0.0.1, signed by it."""
    if shutil.which("openssl") is None:
        raise LocalKafkaError("`openssl` is not on PATH: it makes the SASL_SSL certificates")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    key = "-newkey rsa:2048 -nodes"
    for step in (
        f"req -x509 {key} -days 30 -subj /CN=localkafka-ca -keyout ca.key -out ca.pem",
        f"req {key} -subj /CN=localkafka -keyout broker.key -out broker.csr",
        "x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 "
        "-extfile san.cnf -out broker.pem",
        "pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -out broker.p12 "
        f"-passout pass:{store_password}",
    ):
        _openssl(*step.split(), cwd=directory)


def _brokers_seen(brokers: str) -> set[int]:
    async def probe() -> set[int]:
        client = AIOKafkaClient(bootstrap_servers=brokers, request_timeout_ms=5000)
        try:
            await client.bootstrap()
            return {int(b.nodeId) for b in client.cluster.brokers()}
        except (KafkaError, OSError):  # OSError includes TimeoutError
            return set()
        finally:
            await client.close()

    # A thread of its own, so start() also works when called inside a running event loop.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, probe()).result()


class LocalKafka:
    def __init__(
        self, workdir: Path, nodes: int = 1, version: str | None = None, sasl_ssl: bool = False
    ) -> None:
        if nodes not in (1, 3):
            raise ValueError(f"nodes must be 1 or 3, not {nodes}")
        self.workdir = Path(workdir).resolve()
        self.nodes = nodes
        self.secured = sasl_ssl
        self.version = _version(version)
        self._procs: dict[int, Popen[bytes]] = {}
        self._state: _State | None = None

    def _node_dir(self, i: int) -> Path:
        return self.workdir / f"node-{i}"

    def _props(self, i: int) -> str:
        return str(self._node_dir(i) / "server.properties")

    def _load(self) -> _State | None:
        if self._state is None and (self.workdir / "cluster.json").is_file():
            self._state = json.loads((self.workdir / "cluster.json").read_text())
        return self._state

    @property
    def brokers(self) -> str:
        state = self._load()
        if state is None:
            raise LocalKafkaError(f"no cluster started in {self.workdir}")
        return state["brokers"]

    def running_brokers(self) -> str:
        """``brokers`` of a cluster with a live node, for a shell that did not start it."""
        state = self._load()
        if state is None or not any(self._alive(n) for n in state["nodes"]):
            raise LocalKafkaError(
                f"no cluster is running in {self.workdir}: start one with "
                "`python -m backbone.dev.localkafka start`"
            )
        return state["brokers"]

    @property
    def sasl_ssl(self) -> SaslSsl:
        """The SASL_SSL listeners, their CA and user (a cluster started with ``sasl_ssl``)."""
        state = self._load()
        secured = state.get("sasl_ssl") if state is not None else None
        if secured is None:
            raise LocalKafkaError(f"no cluster with SASL_SSL listeners started in {self.workdir}")
        return secured

    def _alive(self, node: _Node) -> bool:
        """True while the pid is still this node's JVM: a recycled pid is never signalled."""
        proc = self._procs.get(node["id"])
        if proc is not None:  # our child: its pid cannot be reused before we reap it here
            return proc.poll() is None
        try:
            argv = Path(f"/proc/{node['pid']}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        props = self._props(node["id"]).encode()
        return os.path.basename(argv[0]) == b"java" and props in argv

    def _signal_and_wait(self, nodes: list[_Node], sig: int, timeout: float) -> list[_Node]:
        for node in nodes:
            if self._alive(node):
                os.kill(node["pid"], sig)
        deadline = time.monotonic() + timeout
        while (left := [n for n in nodes if self._alive(n)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left

    def _java(self, i: int, *args: str, out: int | IO[bytes], session: bool) -> Popen[bytes]:
        heap = shlex.split(os.environ.get("BACKBONE_KAFKA_HEAP", "-Xmx512m -Xms256m"))
        log4j = f"-Dlog4j2.configurationFile={self._node_dir(i)}/log4j2.properties"
        cmd = ["java", *heap, "-cp", f"{ensure_jars(self.version)}/*", log4j, *args]
        return Popen(cmd, stdout=out, stderr=STDOUT, stdin=DEVNULL, start_new_session=session)

    def start(self, timeout: float = 90.0) -> str:
        t0 = time.monotonic()
        old = self._load()
        if old is not None and any(self._alive(n) for n in old["nodes"]):
            raise LocalKafkaError(f"a cluster is already running in {self.workdir}; stop it first")
        check_java()
        ensure_jars(self.version)
        n, ports, cluster_id = self.nodes, free_ports(3 * self.nodes), _cluster_id()
        nodes = [
            _Node(
                id=i,
                port=ports[3 * i],
                secure_port=ports[3 * i + 2] if self.secured else 0,
                controller_port=ports[3 * i + 1],
                pid=0,
            )
            for i in range(n)
        ]
        voters = ",".join(f"{m['id']}@127.0.0.1:{m['controller_port']}" for m in nodes)
        secured, extra, scram = self._secure(nodes)
        for m in nodes:
            d = self._node_dir(m["id"])
            shutil.rmtree(d, ignore_errors=True)  # every start is a fresh cluster
            (d / "data").mkdir(parents=True)
            (d / "log4j2.properties").write_text(_LOG4J.format(file=d / "broker.log"))
            listeners = f"PLAINTEXT://127.0.0.1:{m['port']}"
            if m["secure_port"]:
                listeners += f",SASL_SSL://127.0.0.1:{m['secure_port']}"
            (d / "server.properties").write_text(
                _SERVER.format(
                    n=n,
                    min_isr=1 if n == 1 else 2,
                    voters=voters,
                    dir=d,
                    listeners=listeners,
                    **m,
                )
                + extra
            )
        # Short-lived JVMs: C1 only and the serial GC start ~30% faster (2-CPU laptops, CI).
        fast = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "kafka.tools.StorageTool")
        fmt = [
            self._java(
                i,
                *fast,
                "format",
                "-t",
                cluster_id,
                "-c",
                self._props(i),
                *scram,
                out=PIPE,
                session=False,
            )
            for i in range(n)
        ]
        outs = [p.communicate()[0].decode(errors="replace") for p in fmt]
        for i, (p, out) in enumerate(zip(fmt, outs, strict=True)):
            if p.returncode != 0:
                raise LocalKafkaError(f"formatting node {i}'s storage failed:\n{_tail(out)}")
        for m in nodes:
            with open(self._node_dir(m["id"]) / "stdout.log", "wb") as log:
                # A session of their own: the brokers outlive `localkafka start` and its Ctrl-C.
                proc = self._java(
                    m["id"], "kafka.Kafka", self._props(m["id"]), out=log, session=True
                )
            self._procs[m["id"]], m["pid"] = proc, proc.pid
        brokers = ",".join(f"127.0.0.1:{m['port']}" for m in nodes)
        self._state = _State(
            brokers=brokers,
            cluster_id=cluster_id,
            version=self.version,
            nodes=nodes,
            sasl_ssl=secured,
        )
        # Written before the wait, so `stop` finds the JVMs even if this process dies meanwhile.
        (self.workdir / "cluster.json").write_text(json.dumps(self._state, indent=2) + "\n")
        _say(f"started {n} JVM(s), waiting for all brokers at {brokers}")
        try:
            self._wait_ready(nodes, brokers, timeout)
        except BaseException:
            self.stop()
            raise
        _say(f"{n} node(s) ready in {time.monotonic() - t0:.1f}s")
        return brokers

    def _secure(self, nodes: list[_Node]) -> tuple[SaslSsl | None, str, tuple[str, ...]]:
        """For SASL_SSL: the listeners' description, the server properties to add and the
        arguments that give ``StorageTool format`` the SCRAM user."""
        if not self.secured:
            return None, "", ()
        pki = self.workdir / "pki"
        shutil.rmtree(pki, ignore_errors=True)
        password, store_password = secrets.token_hex(16), secrets.token_hex(16)
        make_pki(pki, store_password)
        extra = _SASL_SSL.format(
            user=SASL_USER, password=password, pki=pki, store_password=store_password
        )
        secured = SaslSsl(
            brokers=",".join(f"127.0.0.1:{m['secure_port']}" for m in nodes),
            ca_file=str(pki / "ca.pem"),
            username=SASL_USER,
            password=password,
        )
        scram = f"SCRAM-SHA-512=[name={SASL_USER},password={password}]"
        return secured, extra, ("--add-scram", scram)

    def _wait_ready(self, nodes: list[_Node], brokers: str, timeout: float) -> None:
        deadline, seen = time.monotonic() + timeout, set[int]()
        while True:
            for node in nodes:
                proc = self._procs[node["id"]]
                if proc.poll() is not None:
                    raise LocalKafkaError(
                        f"Kafka node {node['id']} exited with code {proc.returncode} at start\n"
                        + self._logs(node["id"])
                    )
            if all(_listening(node["port"]) for node in nodes):
                seen = _brokers_seen(brokers)
                if len(seen) == len(nodes):
                    return
            if time.monotonic() > deadline:
                missing = [node["id"] for node in nodes if node["id"] not in seen]
                raise LocalKafkaError(
                    f"Kafka not ready within {timeout:.0f}s: brokers {sorted(seen)} seen,"
                    f" {missing} missing\n" + "\n".join(self._logs(i) for i in missing)
                )
            time.sleep(0.2)  # poll interval

    def _logs(self, i: int) -> str:
        paths = [self._node_dir(i) / name for name in ("stdout.log", "broker.log")]
        return "\n".join(
            f"--- {p} ---\n{_tail(p.read_text(errors='replace'))}" for p in paths if p.exists()
        )

    def kill_node(self, i: int) -> None:
        """SIGKILL node i (0-based; equals its Kafka node.id) and wait until it is gone."""
        state = self._load()
        if state is None or not 0 <= i < len(state["nodes"]):
            raise LocalKafkaError(f"no node {i} in {self.workdir}")
        if self._signal_and_wait([state["nodes"][i]], signal.SIGKILL, 10.0):
            raise LocalKafkaError(f"node {i} (pid {state['nodes'][i]['pid']}) survived SIGKILL")

    def stop(self, wipe: bool = False) -> None:
        """SIGTERM every node, SIGKILL those alive STOP_GRACE_S later; wipe deletes their files."""
        state = self._load()
        if state is None:
            _say(f"no cluster.json in {self.workdir}: nothing to stop")
            return
        left = self._signal_and_wait(state["nodes"], signal.SIGTERM, STOP_GRACE_S)
        if left:
            _say(f"nodes {[n['id'] for n in left]} outlived SIGTERM by {STOP_GRACE_S}s: SIGKILL")
            if self._signal_and_wait(left, signal.SIGKILL, 10.0):
                raise LocalKafkaError(f"could not stop pids {[n['pid'] for n in left]}")
        self._procs.clear()
        if wipe:  # only what start() wrote, in case --dir points at a directory of value
            for node in state["nodes"]:
                shutil.rmtree(self._node_dir(node["id"]), ignore_errors=True)
            (self.workdir / "cluster.json").unlink()
            with contextlib.suppress(OSError):
                self.workdir.rmdir()
            self._state = None
        _say(f"stopped {len(state['nodes'])} broker(s)" + (", files deleted" if wipe else ""))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        "python -m backbone.dev.localkafka", description=__doc__, formatter_class=raw
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start brokers, print the bootstrap address, exit")
    start.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    start.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for readiness")
    start.add_argument(
        "--sasl-ssl", action="store_true", help="add SASL_SSL listeners (see cluster.json)"
    )
    address = sub.add_parser("address", help="print the bootstrap address of the running brokers")
    stop = sub.add_parser("stop", help="stop the brokers started in --dir")
    stop.add_argument("--wipe", action="store_true", help="also delete the nodes' data and logs")
    for p in (start, address, stop):
        p.add_argument("--dir", type=Path, default=Path(".kafka"), help="work dir (.kafka)")
    sub.add_parser("jars", help="only fetch Kafka's jars into the cache")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            print(LocalKafka(args.dir, args.nodes, sasl_ssl=args.sasl_ssl).start(args.timeout))
        elif args.command == "address":
            print(LocalKafka(args.dir).running_brokers())
        elif args.command == "stop":
            LocalKafka(args.dir).stop(wipe=args.wipe)
        else:
            print(ensure_jars())
    except LocalKafkaError as e:
        print(f"localkafka: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
