"""JetStream clusters: a local one on loopback, and the configuration of one across hosts.

``LocalCluster`` (``cogo up --cluster 3``, fault tests): each node has its own client port,
cluster port and store dir; every node lists every other as a route. Streams are then
created with ``replicas = 3`` so losing one node keeps every stream available (RAFT needs a
majority: 2 of 3).

``write_cluster`` (``cogo cluster config``): one ``nats.conf`` per host of an N-host cluster,
with TLS for clients and routes (a CA and one certificate per host, made with the
``openssl`` command), the users and permissions of ``--auth`` (``cogo.streams.auth``), the
store sized against what Cogo's streams reserve, and route settings that notice a lost host
in seconds; plus the ``cogo.toml`` (``[bus] replicas``) and environment every Cogo host uses.
JetStream reserves a stream's ``max_bytes`` on each of its replicas' nodes when it places the
stream, so a node whose ``max_file_store`` is below the sum cannot take the streams
(``insufficient storage``): ``check_store`` says so before anything runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cogo.config import NATS_CA_ENV, NATS_URL_ENV, Config
from cogo.errors import ConfigError
from cogo.secretfile import write_private_json
from cogo.streams.server import EmbeddedServer, free_port
from cogo.streams.topology import HEADROOM_BYTES, human, reserved_bytes


class LocalCluster:
    """``size`` nats-server processes forming one JetStream cluster named ``cogo``."""

    def __init__(self, data_dir: Path, size: int = 3, *, sync: str = "always") -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        cluster_ports = [free_port() for _ in range(size)]
        routes = [f"nats://127.0.0.1:{p}" for p in cluster_ports]
        self.nodes = [
            EmbeddedServer(
                Path(data_dir) / f"node{i}",
                sync=sync,
                name=f"cogo-{i}",
                cluster_port=cluster_ports[i],
                routes=[r for j, r in enumerate(routes) if j != i],
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated: clients connect to all seeds."""
        return ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            node.start()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every node answers JetStream requests (a meta leader was elected)."""
        await asyncio.gather(*(node.wait_ready(timeout) for node in self.nodes))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# -- a cluster across hosts (`cogo cluster config`) -----------------------------------------

CLIENT_PORT = 4222
CLUSTER_PORT = 6222
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.I)


def parse_size(text: str) -> int:
    """``"60GB"``, ``"512MiB"``, ``"1T"`` or a number of bytes, as bytes (powers of 1024, as
    nats-server reads them)."""
    match = _SIZE.match(str(text))
    if not match:
        raise ConfigError(f"not a size: {text!r} (e.g. 60GB, 512MB, or bytes)")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * 1024 ** " KMGT".index(unit or " "))


def check_store(max_file_store: int, config: Config) -> None:
    """ConfigError if a node of ``max_file_store`` bytes cannot hold Cogo's streams."""
    reserved = reserved_bytes(config)
    need = sum(reserved.values()) + HEADROOM_BYTES
    if max_file_store < need:
        parts = ", ".join(f"{name} {human(size)}" for name, size in reserved.items())
        raise ConfigError(
            f"a node's JetStream store of {human(max_file_store)} is too small: Cogo's streams "
            f"reserve {human(sum(reserved.values()))} on every node ({parts}) and need "
            f"{human(HEADROOM_BYTES)} more for TASKS, RESULTS, FLOW and the buckets; give each "
            f"node at least {human(need)} (--store-size), or lower [events] / [dlq] / [outputs] "
            "max_bytes in cogo.toml"
        )


@dataclass(frozen=True)
class Host:
    """One node of the cluster: where it listens (an IP address or a DNS name)."""

    name: str
    address: str

    @property
    def san(self) -> str:
        try:
            ipaddress.ip_address(self.address)
            return f"IP:{self.address}"
        except ValueError:
            return f"DNS:{self.address}"


def client_urls(hosts: Sequence[Host], *, tls: bool, port: int = CLIENT_PORT) -> str:
    scheme = "tls" if tls else "nats"
    return ",".join(f"{scheme}://{h.address}:{port}" for h in hosts)


def node_config(
    hosts: Sequence[Host],
    index: int,
    *,
    store_dir: str,
    max_file_store: int,
    tls_dir: str | None,
    accounts: str = "",
    client_port: int = CLIENT_PORT,
    cluster_port: int = CLUSTER_PORT,
    sync: str = "always",
) -> str:
    """The ``nats.conf`` of ``hosts[index]``."""
    me = hosts[index]
    routes = [f"{'tls' if tls_dir else 'nats'}://{h.address}:{cluster_port}" for j, h in enumerate(hosts) if j != index]
    lines = [
        f"# node {me.name} of a {len(hosts)}-node Cogo cluster (`cogo cluster config`)",
        f"server_name: {json.dumps(me.name)}",
        f"listen: {json.dumps(f'{me.address}:{client_port}')}",
        "max_payload: 8MB",
        # a client that cannot take its messages is cut off instead of stalling the server
        'write_deadline: "10s"',
        "jetstream {",
        f"  store_dir: {json.dumps(store_dir)}",
        *(["  sync_interval: always"] if sync == "always" else []),
        "  max_memory_store: 256MB",
        f"  max_file_store: {max_file_store}",
        "}",
    ]
    if tls_dir:
        lines += [
            "tls {",
            f"  cert_file: {json.dumps(f'{tls_dir}/{me.name}.pem')}",
            f"  key_file: {json.dumps(f'{tls_dir}/{me.name}-key.pem')}",
            f"  ca_file: {json.dumps(f'{tls_dir}/ca.pem')}",
            "  timeout: 5",
            "}",
        ]
    lines += [
        "cluster {",
        '  name: "cogo"',
        f"  listen: {json.dumps(f'{me.address}:{cluster_port}')}",
        f"  routes: {json.dumps(routes)}",
        # a host cut off is noticed in ~4 s (2 unanswered pings 2 s apart) rather than the
        # default 2 min x 2, and a route whose peer stopped reading is dropped after 5 s:
        # until then this node keeps queueing RAFT traffic for the lost host
        '  ping_interval: "2s"',
        "  ping_max: 2",
        '  write_deadline: "5s"',
    ]
    if tls_dir:
        lines += [
            "  tls {",  # mutual: each node presents its certificate to the others
            f"    cert_file: {json.dumps(f'{tls_dir}/{me.name}.pem')}",
            f"    key_file: {json.dumps(f'{tls_dir}/{me.name}-key.pem')}",
            f"    ca_file: {json.dumps(f'{tls_dir}/ca.pem')}",
            "    verify: true",
            "    timeout: 5",
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n" + accounts


def _openssl() -> str:
    found = shutil.which("openssl")
    if not found:
        raise ConfigError(
            "TLS certificates are made with the `openssl` command, which is not "
            "installed here: install it, or pass --no-tls and bring your own"
        )
    return found


def make_certificates(out: Path, hosts: Sequence[Host], days: int = 825) -> None:
    """A CA (``ca.pem``, ``ca-key.pem``) and one certificate per host (``<name>.pem`` with its
    key), valid for its address, for both server and client use (routes are mutual TLS)."""
    openssl = _openssl()
    out.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        done = subprocess.run([openssl, *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ConfigError(f"openssl {args[0]} failed: {done.stderr.strip()}")

    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    if not (out / "ca.pem").exists():
        run(
            "req",
            "-x509",
            *curve,
            "-keyout",
            str(out / "ca-key.pem"),
            "-out",
            str(out / "ca.pem"),
            "-days",
            str(days * 4),
            "-subj",
            "/CN=cogo cluster CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        )
    for host in hosts:
        key, csr = out / f"{host.name}-key.pem", out / f"{host.name}.csr"
        ext = out / f"{host.name}.ext"
        ext.write_text(
            f"subjectAltName={host.san},DNS:{host.name}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
        )
        run("req", *curve, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={host.name}")
        run(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(out / "ca.pem"),
            "-CAkey",
            str(out / "ca-key.pem"),
            "-set_serial",
            str(secrets.randbits(63)),
            "-days",
            str(days),
            "-extfile",
            str(ext),
            "-out",
            str(out / f"{host.name}.pem"),
        )
        csr.unlink()
        ext.unlink()
    for key in out.glob("*-key.pem"):
        os.chmod(key, 0o600)


@dataclass
class ClusterFiles:
    """What ``write_cluster`` wrote: per-node configuration, and what every Cogo host needs."""

    out: Path
    nodes: list[Path]
    cogo_toml: Path
    env_file: Path
    credentials: Path | None
    nats_url: str


def write_cluster(
    out: Path,
    addresses: Sequence[str],
    config: Config,
    *,
    store_size: int,
    store_dir: str = "/var/lib/cogo/nats",
    tls: bool = True,
    tls_dir: str | None = None,
    auth_users: dict[str, str] | None = None,
    accounts: str = "",
    replicas: int = 3,
    client_port: int = CLIENT_PORT,
    cluster_port: int = CLUSTER_PORT,
) -> ClusterFiles:
    """Write ``<out>/<node>/nats.conf`` for every address, the TLS files under
    ``<out>/tls``, ``<out>/cogo.toml`` and ``<out>/cogo.env`` (and with auth,
    ``<out>/credentials.json``). ``{node}`` in ``store_dir`` is the node's name; ``tls_dir``
    is where the TLS files will be on every host (default: ``<out>/tls``)."""
    if len(addresses) < 3:
        raise ConfigError(
            f"a JetStream cluster that survives the loss of a host needs 3 or more nodes; got {len(addresses)}"
        )
    if len(set(addresses)) != len(addresses):
        raise ConfigError(f"each node needs its own address: {list(addresses)}")
    if not 1 <= replicas <= min(5, len(addresses)):
        raise ConfigError(
            f"replicas must be between 1 and {min(5, len(addresses))} (one per node, at most 5); got {replicas}"
        )
    check_store(store_size, config)
    hosts = [Host(f"cogo-{i + 1}", a) for i, a in enumerate(addresses)]
    out = out.resolve()
    nodes = []
    if tls:
        make_certificates(out / "tls", hosts)
    for i, host in enumerate(hosts):
        text = node_config(
            hosts,
            i,
            store_dir=store_dir.replace("{node}", host.name),
            max_file_store=store_size,
            tls_dir=(tls_dir or str(out / "tls")) if tls else None,
            accounts=accounts,
            client_port=client_port,
            cluster_port=cluster_port,
        )
        path = out / host.name / "nats.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if accounts:
            os.chmod(path, 0o600)  # it holds every user's password
        nodes.append(path)
    url = client_urls(hosts, tls=tls, port=client_port)
    cogo_toml = out / "cogo.toml"
    cogo_toml.write_text(
        "# every Cogo host of this cluster: `cogo up --config cogo.toml`, `cogo run ... --config`\n"
        "[bus]\n"
        f"# the replicas of what the first process creates; the cluster keeps them after\n"
        f"replicas = {replicas}\n"
    )
    env_lines = [f"{NATS_URL_ENV}={url}"]
    if tls:
        env_lines.append(f"{NATS_CA_ENV}={tls_dir or out / 'tls'}/ca.pem")
    env_file = out / "cogo.env"
    env_file.write_text("\n".join(env_lines) + "\n")
    credentials = None
    if auth_users is not None:
        credentials = write_private_json(out / "credentials.json", auth_users)
    return ClusterFiles(out, nodes, cogo_toml, env_file, credentials, url)
