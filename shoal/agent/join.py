"""The joining side of `swarm join`: trust the manager only after its CA matches the token, then get a
certificate for this node."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiohttp

from shoal.certs import client_ssl_context, insecure_probe_context, make_key_and_csr
from shoal.errors import JoinRefused
from shoal.protocol import CA_PATH, JOIN_PATH
from shoal.tokens import check_ca, parse_token
from shoal.types import Doc

JOIN_TIMEOUT = 30.0


@dataclass
class JoinResult:
    node_id: str
    cluster_id: str
    role: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    managers: list[str]
    etcd_initial_cluster: str | None
    answer: Doc  # all the manager said: a new manager's key and store access are in it


def connection_problem(exc: BaseException) -> str:
    """What went wrong with a connection, in words (not the client library's internals)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        exc = exc.os_error
    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


async def _get(session: aiohttp.ClientSession, url: str, context: ssl.SSLContext) -> bytes:
    async with session.get(url, ssl=context) as response:
        if response.status != 200:
            raise JoinRefused(f"the manager at {url} answered {response.status}: is it a shoal manager?")
        return await response.read()


async def join(remote: str, token_text: str, hostname: str, advertise_ip: str, listen_port: int) -> JoinResult:
    """Join through the manager at `remote` ("ip:port") with a join token."""
    token = parse_token(token_text)
    base = f"https://{remote}"
    timeout = aiohttp.ClientTimeout(total=JOIN_TIMEOUT)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            ca_pem = await _get(session, base + CA_PATH, insecure_probe_context())
            check_ca(token, ca_pem)
            import tempfile

            with tempfile.NamedTemporaryFile(suffix=".pem") as ca_file:
                ca_file.write(ca_pem)
                ca_file.flush()
                verified = client_ssl_context(ca_file.name)
                key_pem, csr_pem = make_key_and_csr()
                body = {"Token": token_text, "CSR": csr_pem.decode(), "Hostname": hostname,
                        "AdvertiseAddr": advertise_ip, "ListenPort": listen_port}
                async with session.post(base + JOIN_PATH, json=body, ssl=verified) as response:
                    answer: Doc = await response.json(content_type=None)
                    if response.status != 200:
                        raise JoinRefused(str(answer.get("message") or f"join refused ({response.status})"))
    except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
        raise JoinRefused(
            f"could not reach a manager at {remote}: {connection_problem(exc)}. Check the address and port "
            "(the manager prints them in its join command) and that its daemon is running"
        ) from exc
    return JoinResult(
        node_id=answer["NodeID"], cluster_id=answer["ClusterID"], role=answer["Role"], ca_pem=ca_pem,
        cert_pem=answer["Certificate"].encode(), key_pem=key_pem, managers=list(answer.get("Managers") or []),
        etcd_initial_cluster=answer.get("EtcdInitialCluster"), answer=answer,
    )
