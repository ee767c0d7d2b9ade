"""The etcd member's command line and the error when etcd is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.errors import Unavailable
from shoal.manager import etcd_member
from shoal.manager.etcd_member import MemberConfig


def config(tmp_path: Path) -> MemberConfig:
    return MemberConfig(name="n1", ip="10.1.2.3", data_dir=tmp_path / "etcd", ca_file=tmp_path / "ca.pem",
                        cert_file=tmp_path / "node.pem", key_file=tmp_path / "node-key.pem",
                        crl_file=tmp_path / "crl.pem", cluster_token="c1",
                        initial_cluster="n1=https://10.1.2.3:2380")


def test_missing_etcd_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcd_member.shutil, "which", lambda _: None)
    monkeypatch.setattr(etcd_member.os.path, "exists", lambda _: False)
    with pytest.raises(Unavailable) as caught:
        config(tmp_path).command()
    assert "apt-get install etcd-server" in caught.value.message
    assert "\n" not in caught.value.message


def test_member_uses_mutual_tls_for_clients_and_peers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcd_member.shutil, "which", lambda _: "/usr/bin/etcd")
    argv = config(tmp_path).command()
    flags = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert flags["--listen-client-urls"] == "https://10.1.2.3:2379"
    assert flags["--listen-peer-urls"] == "https://10.1.2.3:2380"
    assert "--client-cert-auth" in argv and "--peer-client-cert-auth" in argv
    assert flags["--data-dir"] == str(tmp_path / "etcd")
