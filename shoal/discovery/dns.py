"""A node's DNS server: swarm names from the node's name table, every other question to the upstream resolvers.

It answers A questions for the names of the services on the networks the asking task is attached to (a
container is known by its address on a network; a question from this machine, such as a host process of the
process executor, sees every network of the node's tasks), with TTL 0 so that a task that went away is not
remembered by a client. For a swarm name, other types (AAAA, …) get an empty answer, as Docker's embedded DNS
gives; names outside the swarm are forwarded to the nameservers of the asking task's `DNSConfig`, or to those of
the node's /etc/resolv.conf when it names none (Docker's embedded DNS server does the same), and a SERVFAIL
answers when none of them does. Messages are parsed and built with dnspython.

It is no open resolver: a question from an address that is neither this machine's nor one of its tasks' is
REFUSED (and learns no name); at most MAX_FORWARDS questions are forwarded at once; an answer that would not
fit the client's buffer (512 bytes, or what its EDNS record offers) carries as many addresses as fit, in a
random order, so that clients spread over the tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from shoal.discovery.names import NameTable

log = logging.getLogger(__name__)

FORWARD_TIMEOUT = 3.0  # per upstream; a client's own resolver retries after about 5 s
TTL = 0
MAX_FORWARDS = 128
CLASSIC_UDP_SIZE = 512
_NAMESERVER = re.compile(r"^\s*nameserver\s+(\S+)", re.MULTILINE)


def upstream_resolvers(resolv_conf: Path = Path("/etc/resolv.conf"), exclude: set[str] | None = None) -> list[str]:
    try:
        text = resolv_conf.read_text()
    except OSError:
        return []
    return [ip for ip in _NAMESERVER.findall(text) if ip not in (exclude or set())]


class DNSServer(asyncio.DatagramProtocol):
    def __init__(self, table: Callable[[], NameTable], upstreams: list[tuple[str, int]],
                 networks_of: Callable[[str], set[str] | None] = lambda _client: None,
                 allowed: Callable[[str], bool] = lambda _client: True,
                 may_forward: Callable[[str], bool] = lambda _client: True,
                 upstreams_of: Callable[[str], list[tuple[str, int]]] = lambda _client: []) -> None:
        self.table = table
        self.upstreams = upstreams
        self.upstreams_of = upstreams_of  # a task's own nameservers (its DNSConfig), [] for the node's
        self.networks_of = networks_of
        self.allowed = allowed  # whether a client that is not one of the node's tasks may ask
        self.may_forward = may_forward  # whether a client may learn names outside the swarm (not on --internal)
        self._forwards = asyncio.Semaphore(MAX_FORWARDS)
        self.transport: asyncio.DatagramTransport | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.answered = self.forwarded = self.failed = self.refused = 0

    # ---- lifecycle ----------------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self.transport = transport
        address: tuple[str, int] = transport.get_extra_info("sockname")[:2]
        return address

    async def start_on(self, sock: socket.socket) -> None:
        """Serve on a bound UDP socket (one made in another network namespace)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self.transport = transport

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for task in self._pending:
            task.cancel()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    # ---- questions --------------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return  # not a DNS message: nothing sensible to answer
        if query.flags & dns.flags.QR:
            return  # an answer, not a question (a reflection)
        if self.networks_of(addr[0]) is None and not self.allowed(addr[0]):
            self.refused += 1
            self._send(self._failure(query, dns.rcode.REFUSED), addr)
            return
        response = self.answer(query, addr[0])
        if response is not None:
            self.answered += 1
            self._send(_fitted(response, query), addr)
            return
        if not self.may_forward(addr[0]):
            self.refused += 1
            self._send(self._failure(query, dns.rcode.REFUSED), addr)
            return
        if self._forwards.locked():
            self.failed += 1
            self._send(self._failure(query, dns.rcode.SERVFAIL), addr)
            return
        task = asyncio.create_task(self._forward(query, addr), name="dns-forward")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def answer(self, query: dns.message.Message, client: str) -> dns.message.Message | None:
        """The answer to a question about a swarm name, or None when it is not one (to be forwarded)."""
        if len(query.question) != 1:
            return None
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN:
            return None
        name = question.name.to_text()
        addresses = self.table().resolve(name, self.networks_of(client))
        if addresses is None:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA | dns.flags.AA
        if question.rdtype == dns.rdatatype.A and addresses:
            shuffled = random.sample(addresses, len(addresses))
            response.answer.append(dns.rrset.from_text_list(question.name, TTL, dns.rdataclass.IN,
                                                            dns.rdatatype.A, shuffled))
        return response

    async def _forward(self, query: dns.message.Message, addr: tuple[str, int]) -> None:
        async with self._forwards:
            await self._forward_now(query, addr)

    async def _forward_now(self, query: dns.message.Message, addr: tuple[str, int]) -> None:
        for host, port in self.upstreams_of(addr[0]) or self.upstreams:
            try:
                response = await dns.asyncquery.udp(query, host, timeout=FORWARD_TIMEOUT, port=port,
                                                    ignore_unexpected=True)
            except (dns.exception.DNSException, OSError) as exc:
                log.debug("dns: upstream %s:%d did not answer %s: %s", host, port, query.question, exc)
                continue
            self.forwarded += 1
            self._send(response.to_wire(), addr)
            return
        self.failed += 1
        self._send(self._failure(query, dns.rcode.SERVFAIL), addr)

    @staticmethod
    def _failure(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
        failure = dns.message.make_response(query)
        failure.set_rcode(rcode)
        return failure.to_wire()

    def _send(self, wire: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(OSError):
                self.transport.sendto(wire, addr)


def _fitted(response: dns.message.Message, query: dns.message.Message) -> bytes:
    """The answer in as few addresses as fit the client's buffer (all of them when they do)."""
    limit = max(CLASSIC_UDP_SIZE, query.payload if query.edns >= 0 else CLASSIC_UDP_SIZE)
    while True:
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            rrset = response.answer[0]
            keep = list(rrset)[: max(1, len(rrset) // 2)]
            response.answer[0] = dns.rrset.from_rdata_list(rrset.name, rrset.ttl, keep)
