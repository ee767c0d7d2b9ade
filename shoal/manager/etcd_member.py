"""The etcd member a manager runs and supervises: the store's replica on this node.

Client and peer traffic use the node's certificate from the store CA (mutual TLS on both), which only managers
hold (store_access.py). The member's data
lives under the node's state dir, so a restarted daemon restarts its member on the same data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import Unavailable
from shoal.timeouts import within

log = logging.getLogger(__name__)

CLIENT_PORT = 2379
PEER_PORT = 2380


class EtcdMissing(Unavailable):
    def __init__(self) -> None:
        super().__init__(
            "etcd is not installed: a manager runs an etcd member. Install it with "
            "`apt-get install etcd-server` (Debian/Ubuntu), or point shoal at an existing etcd cluster "
            "with `shoal daemon --etcd-endpoints`."
        )


def etcd_binary() -> str:
    path = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
    if path is None:
        raise EtcdMissing()
    return path


def client_url(ip: str) -> str:
    return f"https://{ip}:{CLIENT_PORT}"


def peer_url(ip: str) -> str:
    return f"https://{ip}:{PEER_PORT}"


@dataclass
class MemberConfig:
    name: str  # the node ID
    ip: str  # the node's advertise address
    data_dir: Path
    ca_file: Path
    cert_file: Path
    key_file: Path
    crl_file: Path  # certificates of the store CA revoked since (read by etcd on every new connection)
    cluster_token: str
    # "name=https://ip:2380,…" — only read by etcd when the data dir is new.
    initial_cluster: str
    initial_state: str = "new"  # or "existing" when joining a running cluster
    # Restart as the only member, keeping the data (swarm init --force-new-cluster); used for one start.
    force_new_cluster: bool = False

    def command(self) -> list[str]:
        return [
            etcd_binary(),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client_url(self.ip),
            "--advertise-client-urls", client_url(self.ip),
            "--listen-peer-urls", peer_url(self.ip),
            "--initial-advertise-peer-urls", peer_url(self.ip),
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", self.initial_state,
            "--initial-cluster-token", self.cluster_token,
            "--cert-file", str(self.cert_file), "--key-file", str(self.key_file),
            "--trusted-ca-file", str(self.ca_file), "--client-cert-auth", "--client-crl-file", str(self.crl_file),
            "--peer-cert-file", str(self.cert_file), "--peer-key-file", str(self.key_file),
            "--peer-trusted-ca-file", str(self.ca_file), "--peer-client-cert-auth",
            "--peer-crl-file", str(self.crl_file),
            # Fast failure detection on loopback and LANs: leader failover within about a second.
            "--heartbeat-interval", "50", "--election-timeout", "500",
            # A member that comes back from a partition asks before it campaigns, so it does not depose a
            # healthy leader with its higher term (etcd 3.5 turns this on by default).
            "--pre-vote",
            # A transaction carries up to 500 documents (shoal.manager.applier.CHUNK), a create two keys each.
            "--max-txn-ops", "2048", "--max-request-bytes", str(8 * 1024 * 1024),
            "--auto-compaction-mode", "revision", "--auto-compaction-retention", "10000",
            "--quota-backend-bytes", str(2 * 1024**3),
            "--logger", "zap", "--log-level", "warn",
        ] + (["--force-new-cluster"] if self.force_new_cluster else [])


class EtcdMember:
    """Runs etcd as a child process and restarts it when it dies, until stopped."""

    def __init__(self, config: MemberConfig, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def pid_file(self) -> Path:
        return self.config.data_dir.parent / "etcd.pid"

    def _stop_orphan(self) -> None:
        """A daemon killed with SIGKILL leaves its etcd running: stop it before starting ours on its data."""
        try:
            pid = int(self.pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"etcd" not in cmdline or str(self.config.data_dir).encode() not in cmdline:
            return
        log.warning("stopping etcd member left over from a previous daemon (pid %d)", pid)
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            try:
                if Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
            except OSError:
                break
            time.sleep(0.05)

    def _spawn(self) -> None:
        self.config.data_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._stop_orphan()
        descriptor = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        logfile = os.fdopen(descriptor, "ab")  # handed to the child
        try:
            self._proc = subprocess.Popen(
                self.config.command(), stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            logfile.close()
        self.pid_file.write_text(str(self._proc.pid))
        # --force-new-cluster rewrites the membership once; later restarts are ordinary.
        self.config.force_new_cluster = False
        log.info("etcd member %s started (pid %d)", self.config.name, self._proc.pid)

    async def start(self) -> None:
        self._stopping = False
        self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="etcd-member")

    async def _supervise(self) -> None:
        backoff = 0.5
        while not self._stopping:
            proc = self._proc
            assert proc is not None
            code = await asyncio.to_thread(proc.wait)
            if self._stopping:
                return
            log.error("etcd member exited with %s; restarting in %.1fs (log: %s)", code, backoff, self.log_path)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            if not self._stopping:
                self._spawn()

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await within(asyncio.to_thread(proc.wait), 10)
            except TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
            self._supervisor = None

    def exited_early(self) -> str | None:
        """The tail of etcd's log when it died before serving, for a clear error."""
        if self._proc is not None and self._proc.poll() is not None:
            try:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            except OSError:
                tail = []
            return " | ".join(tail) or f"exit code {self._proc.returncode}"
        return None
