"""The routing mesh: every node listens on each service's published ports and forwards to its running tasks.

`table` turns the store's services, tasks and nodes into the endpoint table (pure); the leader's dispatcher
sends it to every agent. On the agent, `mesh.RoutingMesh` keeps one data path in step with it: `userspace`
(an asyncio TCP/UDP proxy, works everywhere) or `kernel` (nftables DNAT rules, where root and `nft` are there).
"""
