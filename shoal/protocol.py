"""Messages of the agent session: one long-lived, mutually authenticated WebSocket per agent.

agent -> manager
  {"type": "hello", "description": NodeDescription}
  {"type": "status", "updates": [...]}        (right after hello: all it runs, possibly nothing; the node is
                                               marked ready only once these are in the store)
  {"type": "heartbeat", "lag": seconds}       (every heartbeat period; lag: the agent's recent loop lag)
  {"type": "bye", "restarting": true}         (the daemon stops for a restart; its tasks keep running)
  {"type": "bye", "silent": true}             (the manager did not answer in time: the agent tries another)
  {"type": "status", "updates": [{"TaskID": id, "Status": TaskStatus}, …]}
  {"type": "mesh", "errors": [text, …]}        (published ports this node cannot listen on; [] when all fine)
  {"type": "log", "req": n, "task": id, "stream": 1|2, "ts": unix, "line": text}
  {"type": "log_end", "req": n}
manager -> agent
  {"type": "welcome", "node_id": id, "heartbeat_period": seconds, "managers": ["ip:port", …]}
  {"type": "heartbeat", "lag": s, "period": s} (the answer to each heartbeat: the manager's loop lag, and the
                                               heartbeat period, which grows with the swarm)
  {"type": "assignments", "full": bool, "tasks": [Task, …], "remove": [id, …],
   "secrets": [{"ID", "Data": base64}, …], "configs": […],   (values the node did not hold and a task of
   "forget": {"secrets": [id, …], "configs": [id, …]}}         this message needs; those no task needs now)
  {"type": "logs", "req": n, "tasks": [id, …], "tail": int (-1 = all), "follow": bool}
  {"type": "logs_cancel", "req": n}
  {"type": "managers", "managers": ["ip:port", …]}
  {"type": "endpoints", "listeners": [Listener, …]}  (the routing mesh's table, shoal.mesh.table; whole)
  {"type": "redirect", "leader": "ip:port"}   (this manager is not the leader; the session ends)
  {"type": "rejected", "message": text}        (e.g. the node was removed; the session ends)

Heartbeats are kept in the leader's memory, never in the store; task status is coalesced into batched
store writes by the dispatcher. Each side gives up on a peer that stays silent for a few heartbeat periods
plus the loop lag the peer last reported, so a dead or cut-off peer is noticed long before TCP would.
"""

SESSION_PATH = "/shoal/session"
# Sent by the agent with each session attempt: "<agent instance>:<attempt number>". A leader that answers an
# attempt late never lets it replace a session the same agent opened after it.
ATTEMPT_HEADER = "Shoal-Attempt"
JOIN_PATH = "/shoal/join"
CA_PATH = "/shoal/ca"
DEBUG_PATH = "/shoal/debug"
