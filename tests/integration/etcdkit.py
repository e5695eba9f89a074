"""Real etcd for the tests: 1 or 3 members of Debian's ``etcd`` (etcd-server, 3.4) on
loopback, each with free ports and its own data dir under the test's tmp dir, a cluster
token of their own (so two runs on one machine never join each other's members); and
kill -9, stop and start of a member. ``etcd_cluster`` always cleans up: it kills every
member and fails the test if any process still runs from the cluster's directory.

With ``tls=True`` the members serve their client port over TLS and require a client
certificate, all signed by a CA made for the cluster with openssl (``ca``, ``cert``,
``key`` are the client's files).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
import uuid
from typing import Callable, Iterator, List, Optional, Sequence

import pytest

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, predicate: Callable[[], object], timeout: float = 30.0) -> None:
    """Poll until ``predicate()`` is truthy; fail naming ``what`` (the timeout only
    bounds a hang, it asserts nothing about speed)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Member:
    def __init__(self, cluster: EtcdCluster, i: int) -> None:
        self.cluster = cluster
        self.name = f"m{i + 1}"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = os.path.join(cluster.base, self.name)
        self.log = os.path.join(cluster.base, f"{self.name}.log")
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{self.cluster.scheme}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self) -> None:
        assert self.proc is None, f"{self.name} already runs"
        c = self.cluster
        args = [ETCD, "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", ",".join(f"{m.name}={m.peer_url}" for m in c.members),
                "--initial-cluster-token", c.token, "--initial-cluster-state", "new",
                "--logger", "zap", "--log-outputs", "stderr", *c.extra_args]
        if c.tls:
            args += ["--cert-file", c.file("server.pem"), "--key-file", c.file("server.key"),
                     "--trusted-ca-file", c.file("ca.pem"), "--client-cert-auth"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        """SIGTERM, as an operator's stop; SIGKILL if it has not exited in 20 s."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def healthy(self) -> bool:
        """etcd's /health: the member answers and its cluster has a leader."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2,
                                        context=self.cluster.client_tls()) as r:
                return b'"true"' in r.read()
        except OSError:
            return False


class EtcdCluster:
    def __init__(self, base: str, n: int, tls: bool = False,
                 extra_args: Sequence[str] = ()) -> None:
        self.base = base
        self.tls = tls
        self.extra_args = list(extra_args)  # for every member
        self.scheme = "https" if tls else "http"
        self.token = f"fleetd-test-{uuid.uuid4().hex[:12]}"
        os.makedirs(base, exist_ok=True)
        self.members: List[Member] = [Member(self, i) for i in range(n)]
        if tls:
            self._make_certs()

    @property
    def endpoints(self) -> List[str]:
        return [m.endpoint for m in self.members]

    def file(self, name: str) -> str:
        return os.path.join(self.base, "tls", name)

    @property
    def ca(self) -> str:
        return self.file("ca.pem")

    @property
    def cert(self) -> str:
        return self.file("client.pem")

    @property
    def key(self) -> str:
        return self.file("client.key")

    def client_tls(self) -> Optional[ssl.SSLContext]:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def start(self) -> None:
        for m in self.members:
            m.start()
        self.wait_healthy()

    def wait_healthy(self, members: Optional[List[Member]] = None) -> None:
        ms = members or [m for m in self.members if m.proc is not None]
        wait_until(f"etcd members {[m.name for m in ms]} healthy",
                   lambda: all(m.healthy() for m in ms))

    def close(self) -> None:
        for m in self.members:
            m.kill()

    def leftovers(self) -> List[int]:
        """Pids of processes whose command line names this cluster's directory."""
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if self.base.encode() in f.read():
                        pids.append(int(d))
            except OSError:
                continue
        return pids

    def _make_certs(self) -> None:
        d = os.path.join(self.base, "tls")
        os.makedirs(d)

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=fleetd test etcd CA")
        for name, ext in (("server", "subjectAltName=IP:127.0.0.1\n"
                                     "extendedKeyUsage=serverAuth,clientAuth\n"),
                          ("client", "extendedKeyUsage=clientAuth\n")):
            with open(os.path.join(d, f"{name}.ext"), "w") as f:
                f.write(ext)
            openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                    "-out", f"{name}.csr", "-subj", f"/CN=fleetd test {name}")
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
                    "-extfile", f"{name}.ext")


@contextlib.contextmanager
def etcd_cluster(base: str, n: int = 1, tls: bool = False,
                 extra_args: Sequence[str] = ()) -> Iterator[EtcdCluster]:
    """A running cluster of ``n`` members under ``base`` (``extra_args``: more flags for
    each); afterwards every member killed, and the test failed if a process of it
    survived."""
    c = EtcdCluster(base, n, tls, extra_args)
    try:
        c.start()
        yield c
    finally:
        c.close()
        left = c.leftovers()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"etcd processes left behind: {left}"
