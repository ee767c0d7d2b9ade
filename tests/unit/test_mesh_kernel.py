"""The kernel data path's rules as text, and when they are applied (a fake runner; no nft needed)."""

from __future__ import annotations

import re

import pytest

from shoal.mesh.kernel import DNAT_MARK, KernelDataPath, KernelPathError, KernelRule, render, table_name
from shoal.mesh.table import Backend

ALPHA = Backend("task-alpha", "10.0.0.2", 30001)
BRAVO = Backend("task-bravo", "10.0.0.3", 30002)
CHARLIE = Backend("task-charlie", "127.0.0.1", 30003)


def chain_body(script: str, chain: str) -> list[str]:
    """The lines inside one chain of a rendered script."""
    match = re.search(rf"\tchain {chain} {{\n(.*?)^\t}}", script, re.DOTALL | re.MULTILINE)
    assert match, f"no chain {chain} in:\n{script}"
    return [line.strip() for line in match.group(1).splitlines()]


class FakeNft:
    def __init__(self, fail_with: str | None = None) -> None:
        self.scripts: list[str] = []
        self.fail_with = fail_with

    async def __call__(self, script: str) -> None:
        self.scripts.append(script)
        if self.fail_with:
            raise KernelPathError(self.fail_with)


def test_table_name_is_per_node_and_a_valid_identifier() -> None:
    assert table_name("4x9kq2m7ab1cdeffghij0klmn") == "shoal_4x9kq2m7ab1c"
    assert table_name("node-1") == "shoal_node_1"
    assert table_name("abcdefghijklmn") != table_name("bbcdefghijklmn")


def test_the_script_replaces_the_whole_table_in_one_go() -> None:
    script = render("shoal_n1", "127.0.0.5", [])
    lines = script.splitlines()
    # add first so that delete never fails on a fresh machine; then the full table
    assert lines[:3] == ["add table ip shoal_n1", "delete table ip shoal_n1", "table ip shoal_n1 {"]
    assert lines[-1] == "}"
    assert chain_body(script, "nat_prerouting") == [
        "type nat hook prerouting priority dstnat; policy accept;", "jump services"]
    assert chain_body(script, "nat_output") == ["type nat hook output priority -100; policy accept;",
                                                "jump services"]
    assert chain_body(script, "filter_input")[1:] == ["jump no_backends"]
    assert chain_body(script, "filter_output")[1:] == ["jump no_backends"]
    assert chain_body(script, "services") == []
    assert chain_body(script, "no_backends") == ["ct status dnat return"]


def test_several_backends_are_taken_in_turn_and_marked_for_masquerade() -> None:
    script = render("shoal_n1", "127.0.0.5", [KernelRule("tcp", 8080, (ALPHA, BRAVO, CHARLIE))])
    mark = f"{DNAT_MARK:#010x}"
    assert chain_body(script, "services") == [
        f"ip daddr 127.0.0.5 tcp dport 8080 ct mark set ct mark or {mark} dnat to numgen inc mod 3 map "
        "{ 0 : 10.0.0.2 . 30001, 1 : 10.0.0.3 . 30002, 2 : 127.0.0.1 . 30003 }"]
    assert chain_body(script, "nat_postrouting") == [
        "type nat hook postrouting priority srcnat; policy accept;",
        f'ct status dnat ct mark and {mark} == {mark} oifname != "lo" masquerade']
    assert chain_body(script, "no_backends") == ["ct status dnat return"]


def test_no_backends_rejects_tcp_with_a_reset_and_udp_with_unreachable() -> None:
    script = render("shoal_n1", "10.0.0.1", [KernelRule("tcp", 80, ()), KernelRule("udp", 53, ())])
    assert chain_body(script, "services") == []
    assert chain_body(script, "no_backends") == ["ct status dnat return",
                                                 "ip daddr 10.0.0.1 udp dport 53 reject",
                                                 "ip daddr 10.0.0.1 tcp dport 80 reject with tcp reset"]


def test_udp_is_dnated_like_tcp() -> None:
    script = render("shoal_n1", "10.0.0.1", [KernelRule("udp", 53, (ALPHA,))])
    assert chain_body(script, "services") == [
        f"ip daddr 10.0.0.1 udp dport 53 ct mark set ct mark or {DNAT_MARK:#010x} "
        "dnat to numgen inc mod 1 map { 0 : 10.0.0.2 . 30001 }"]


@pytest.mark.parametrize("wildcard", ["0.0.0.0", ""])
def test_a_wildcard_listen_host_matches_every_local_address(wildcard: str) -> None:
    script = render("shoal_n1", wildcard, [KernelRule("tcp", 80, (ALPHA,)), KernelRule("udp", 81, ())])
    assert chain_body(script, "services")[0].startswith("fib daddr type local tcp dport 80 ")
    assert chain_body(script, "no_backends")[1] == "fib daddr type local udp dport 81 reject"
    assert "ip daddr" not in script
    # Local clients of 127.0.0.1 go to the userspace listener: DNAT to another machine cannot route them.
    assert chain_body(script, "nat_output")[1:] == ["ip saddr != 127.0.0.0/8 jump services"]


def test_rendering_does_not_depend_on_the_order_of_the_rules() -> None:
    rules = [KernelRule("udp", 90, (BRAVO,)), KernelRule("tcp", 90, (ALPHA,)), KernelRule("tcp", 80, ())]
    assert render("t", "127.0.0.5", rules) == render("t", "127.0.0.5", list(reversed(rules)))
    services = chain_body(render("t", "127.0.0.5", rules), "services")
    assert [line.split(" dport ")[0].split()[-1] for line in services] == ["tcp", "udp"]


@pytest.mark.parametrize("listen_host, rule", [
    ("127.0.0.5", KernelRule("tcp", 80, (Backend("t", "db.example; flush ruleset", 1),))),
    ("127.0.0.5", KernelRule("tcp", 80, (Backend("t", "fd00::1", 1),))),
    ("::1", KernelRule("tcp", 80, ())),
    ("127.0.0.5", KernelRule("sctp", 80, ())),
    ("127.0.0.5", KernelRule("tcp", 0, ())),
    ("127.0.0.5", KernelRule("tcp", 80, (Backend("t", "10.0.0.2", 70000),))),
])
def test_what_the_rules_cannot_express_is_refused_before_nft_sees_it(listen_host: str,
                                                                     rule: KernelRule) -> None:
    with pytest.raises(KernelPathError):
        render("t", listen_host, [rule])


def test_a_port_given_twice_is_refused() -> None:
    with pytest.raises(KernelPathError, match="twice"):
        render("t", "127.0.0.5", [KernelRule("tcp", 80, (ALPHA,)), KernelRule("tcp", 80, (BRAVO,))])


async def test_sync_applies_only_what_changed() -> None:
    nft = FakeNft()
    path = KernelDataPath("node-one-0123456789", "127.0.0.5", runner=nft)
    rules = [KernelRule("tcp", 80, (ALPHA, BRAVO))]

    await path.sync(rules)
    await path.sync(list(rules))
    assert len(nft.scripts) == 1
    assert nft.scripts[0] == render("shoal_node_one_012", "127.0.0.5", rules)

    await path.sync([KernelRule("tcp", 80, (ALPHA,))])
    assert len(nft.scripts) == 2
    assert "mod 1 map" in nft.scripts[1]


async def test_a_failed_apply_is_retried_on_the_next_sync() -> None:
    nft = FakeNft(fail_with="Error: Could not process rule")
    path = KernelDataPath("n1", "127.0.0.5", runner=nft)
    rules = [KernelRule("tcp", 80, (ALPHA,))]
    with pytest.raises(KernelPathError):
        await path.sync(rules)
    nft.fail_with = None
    await path.sync(rules)
    assert len(nft.scripts) == 2


async def test_clear_deletes_the_table_and_the_next_sync_applies_again() -> None:
    nft = FakeNft()
    path = KernelDataPath("n1", "127.0.0.5", runner=nft)
    rules = [KernelRule("tcp", 80, (ALPHA,))]
    await path.sync(rules)
    await path.clear()
    # adding before deleting makes clearing a table that is not there succeed
    assert nft.scripts[-1] == "add table ip shoal_n1\ndelete table ip shoal_n1\n"
    await path.sync(rules)
    assert len(nft.scripts) == 3
