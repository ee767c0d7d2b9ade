"""Swarm networks on the wire: a multi-host VXLAN overlay per network, programmed from the store (see plan.py)."""
