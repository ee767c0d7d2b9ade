"""Secrets and configs in the control API: spec checks, labels-only updates, who uses them, list filters, and
the sealing of a secret's data."""

from __future__ import annotations

import base64

import pytest

from shoal.errors import InvalidArgument
from shoal.manager.controlapi import secret as secret_api
from shoal.manager.keys import (
    new_data_key,
    new_manager_key,
    open_secret,
    seal_secret,
    unwrap_data_key,
    wrap_data_key,
)
from shoal.spec import SEALED_DATA
from shoal.types import CONFIGS, SECRETS


def body(name: str = "db_password", data: bytes = b"s3cret", **extra: object) -> dict[str, object]:
    return {"Name": name, "Data": base64.b64encode(data).decode(), **extra}


def test_a_valid_spec_keeps_name_and_labels_and_returns_the_data() -> None:
    spec, data = secret_api.validate_spec(body(Labels={"env": "prod"}), SECRETS)
    assert spec == {"Name": "db_password", "Labels": {"env": "prod"}} and data == b"s3cret"


@pytest.mark.parametrize("bad, message", [
    (body(name=""), "invalid secret name"),
    (body(name="-starts-badly"), "invalid secret name"),
    (body(name="x" * 65), "invalid secret name"),
    (body(name="has space"), "invalid secret name"),
    (body(data=b""), "larger than 0 and less than 500KB"),
    (body(data=b"x" * (500 * 1024 + 1)), "larger than 0 and less than 500KB"),
    ({"Name": "n", "Data": "not base64!"}, "not valid base64"),
    ({"Name": "n"}, "base64"),
    (body(Labels={"a": 1}), "Labels"),
    (body(Driver={"Name": "vault"}), "external drivers are not supported"),
    ("a string", "JSON object"),
])
def test_bad_specs_are_refused_with_one_clear_line(bad: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as caught:
        secret_api.validate_spec(bad, SECRETS)
    assert "\n" not in caught.value.message


def test_only_labels_change() -> None:
    spec, _ = secret_api.validate_spec(body(), SECRETS)
    current = secret_api.new_object(spec, "s1", 1.0, {SEALED_DATA: "sealed"})
    updated = secret_api.updated_object(current, {"Name": "db_password", "Labels": {"v": "2"}}, SECRETS, 2.0)
    assert updated["Spec"]["Labels"] == {"v": "2"} and updated[SEALED_DATA] == "sealed"
    with pytest.raises(InvalidArgument, match="only updates to Labels are allowed"):
        secret_api.updated_object(current, body(data=b"new"), SECRETS, 2.0)
    with pytest.raises(InvalidArgument, match="only updates to Labels are allowed"):
        secret_api.updated_object(current, {"Name": "renamed"}, SECRETS, 2.0)


def test_a_secret_in_use_names_its_services() -> None:
    def service(name: str, *ids: str) -> dict[str, object]:
        secrets = [{"SecretID": i, "SecretName": i, "File": {"Name": i}} for i in ids]
        return {"Spec": {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "x", "Secrets": secrets}}}}

    services = [service("web", "s1"), service("api", "s1", "s2"), service("db")]
    assert secret_api.users("s1", SECRETS, services) == ["api", "web"]
    assert secret_api.users("s1", CONFIGS, services) == []
    error = secret_api.in_use_error("pw", SECRETS, ["api", "web"])
    assert error.message.endswith("secret 'pw' is in use by the following services: api, web")


def test_list_filters() -> None:
    obj = {"ID": "abc123", "Spec": {"Name": "app_db", "Labels": {"stack": "app"}}}
    assert secret_api.matches(obj, {"name": ["app_"]}) and not secret_api.matches(obj, {"names": ["app_"]})
    assert secret_api.matches(obj, {"names": ["app_db"], "id": ["abc"], "label": ["stack=app"]})
    with pytest.raises(InvalidArgument):
        secret_api.matches(obj, {"colour": ["blue"]})


def test_secret_data_is_sealed_with_the_data_key_which_is_wrapped_with_the_managers_key() -> None:
    manager_key, data_key = new_manager_key(), new_data_key()
    wrapped = wrap_data_key(data_key, manager_key)
    assert data_key not in wrapped and unwrap_data_key(wrapped, manager_key) == data_key

    stored = seal_secret(data_key, "s1", b"hunter2")
    assert b"hunter2" not in base64.b64decode(stored) and "hunter2" not in stored
    assert open_secret(data_key, "s1", stored) == b"hunter2"
    with pytest.raises(InvalidArgument):
        open_secret(data_key, "s2", stored)  # bound to its secret: not movable to another


# ---- references in a service spec ----------------------------------------------------------------------------

def spec_with(secrets: list[dict[str, object]], configs: list[dict[str, object]] | None = None) -> dict[str, object]:
    container: dict[str, object] = {"Image": "busybox", "Secrets": secrets}
    if configs is not None:
        container["Configs"] = configs
    return {"Name": "web", "TaskTemplate": {"ContainerSpec": container}}


STORED = {"sid1": {"ID": "sid1", "Spec": {"Name": "db_password"}}}
CONFIGS_STORED = {"cid1": {"ID": "cid1", "Spec": {"Name": "app.conf"}}}


def test_references_are_resolved_to_id_and_name_with_dockers_file_defaults() -> None:
    spec = spec_with([{"SecretName": "db_password"}], [{"ConfigID": "cid1", "File": {"Name": "/etc/app.conf"}}])
    resolved = secret_api.resolve_references(spec, STORED, CONFIGS_STORED)
    container = resolved["TaskTemplate"]["ContainerSpec"]  # type: ignore[index]
    assert container["Secrets"] == [{"SecretID": "sid1", "SecretName": "db_password",
                                     "File": {"Name": "db_password", "UID": "0", "GID": "0", "Mode": 0o444}}]
    assert container["Configs"] == [{"ConfigID": "cid1", "ConfigName": "app.conf",
                                     "File": {"Name": "/etc/app.conf", "UID": "0", "GID": "0", "Mode": 0o444}}]


@pytest.mark.parametrize("ref", [{"SecretName": "nope"}, {"SecretID": "nope"},
                                 {"SecretID": "sid1", "SecretName": "another"}])
def test_an_unknown_secret_refuses_the_spec(ref: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument, match="^secret not found: (nope|another)$"):
        secret_api.resolve_references(spec_with([ref]), STORED, CONFIGS_STORED)
