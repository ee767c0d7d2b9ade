"""The routing mesh's endpoint table (pure) and what one node serves of it."""

from __future__ import annotations

import pytest

from shoal.mesh.kernel import KernelPathError
from shoal.mesh.mesh import choose_mode, local_plan
from shoal.mesh.table import Backend, Listener, endpoint_table
from shoal.spec import BACKEND_PORTS
from shoal.types import Doc

NODES: dict[str, Doc] = {
    "n1": {"ID": "n1", "Status": {"State": "ready", "Addr": "10.0.0.1"}},
    "n2": {"ID": "n2", "Status": {"State": "ready", "Addr": "10.0.0.2"}},
    "n3": {"ID": "n3", "Status": {"State": "down", "Addr": "10.0.0.3"}},
}


def web(*ports: Doc) -> Doc:
    return {"ID": "web1", "Spec": {"Name": "web"}, "Endpoint": {"Ports": list(ports)}}


def port(published: int, target: int = 80, protocol: str = "tcp", mode: str = "ingress") -> Doc:
    return {"Protocol": protocol, "TargetPort": target, "PublishedPort": published, "PublishMode": mode}


def task(task_id: str, node_id: str, node_port: int | None = 41000, state: str = "running",
         desired: str = "running", target: int = 80, protocol: str = "tcp") -> Doc:
    status: Doc = {"State": state}
    if node_port is not None:
        status[BACKEND_PORTS] = [{"Protocol": protocol, "TargetPort": target, "Port": node_port}]
    return {"ID": task_id, "ServiceID": "web1", "NodeID": node_id, "DesiredState": desired, "Status": status}


def test_running_tasks_that_reported_their_ports_are_backends_at_their_node_address() -> None:
    table = endpoint_table([web(port(8080))], [task("t1", "n1", 41001), task("t2", "n2", 41002)], NODES)
    assert table == [Listener("tcp", 8080, 80, "ingress", "web1", "web",
                              (Backend("t1", "10.0.0.1", 41001), Backend("t2", "10.0.0.2", 41002)))]


def test_tasks_not_serving_get_no_connections() -> None:
    tasks = [
        task("starting", "n1", state="starting"),
        task("stopping", "n1", desired="shutdown"),  # being stopped: drained at once
        task("not-listening-yet", "n1", node_port=None),
        task("on-down-node", "n3"),
        task("unknown-node", "n9"),
        task("good", "n2", 41009),
    ]
    [listener] = endpoint_table([web(port(8080))], tasks, NODES)
    assert listener.backends == (Backend("good", "10.0.0.2", 41009),)


def test_each_published_port_maps_to_its_own_target_and_protocol() -> None:
    service = web(port(8080, 80), port(5353, 53, "udp"))
    tasks = [task("t1", "n1", 41001), task("t2", "n1", 41002, target=53, protocol="udp")]
    table = endpoint_table([service], tasks, NODES)
    assert [(listener.key, listener.backends) for listener in table] == [
        ((5353, "udp"), (Backend("t2", "10.0.0.1", 41002),)),
        ((8080, "tcp"), (Backend("t1", "10.0.0.1", 41001),)),
    ]


def test_a_service_with_no_running_task_still_has_its_ports_with_no_backends() -> None:
    assert endpoint_table([web(port(8080))], [], NODES)[0].backends == ()


def test_the_table_survives_the_wire() -> None:
    listener = Listener("udp", 53, 53, "host", "s", "dns", (Backend("t", "10.0.0.1", 5000),))
    assert Listener.from_wire(listener.to_wire()) == listener


def test_a_node_serves_every_ingress_port_and_host_ports_only_for_its_own_tasks() -> None:
    table = [
        Listener("tcp", 8080, 80, "ingress", "s1", "web", (Backend("t1", "10.0.0.1", 1), Backend("t2", "10.0.0.2", 2))),
        Listener("tcp", 9090, 90, "host", "s2", "api", (Backend("t3", "10.0.0.1", 3), Backend("t4", "10.0.0.2", 4))),
        Listener("tcp", 7070, 70, "host", "s3", "elsewhere", (Backend("t5", "10.0.0.2", 5),)),
    ]
    plan = local_plan(table, {"t3"}, executor_binds_host_ports=False)
    assert [(s.key, s.backends) for s in plan] == [
        ((8080, "tcp"), table[0].backends),
        ((9090, "tcp"), (Backend("t3", "10.0.0.1", 3),)),
    ]
    # Docker binds host ports itself: the mesh leaves them alone.
    assert [s.key for s in local_plan(table, {"t3"}, executor_binds_host_ports=True)] == [(8080, "tcp")]


def test_auto_takes_the_kernel_path_only_where_forwarded_traffic_gets_through() -> None:
    assert choose_mode("auto", None, None)[0] == "kernel"
    mode, why = choose_mode("auto", None, "a forward chain drops by default")
    assert mode == "userspace" and "forward chain drops" in why
    # forced: the operator opened forwarding
    assert choose_mode("kernel", None, "a forward chain drops by default") == ("kernel", "asked for")
    with pytest.raises(KernelPathError, match="not running as root; use --routing-mesh userspace"):
        choose_mode("kernel", "not running as root", None)
    assert choose_mode("userspace", None, None)[0] == "userspace"
    assert choose_mode("auto", "not running as root", None)[0] == "userspace"
