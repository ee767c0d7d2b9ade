"""The node side of shoal: the session with the managers, the worker that runs assigned tasks, executors."""
