"""Stacks: an application's services, networks, secrets and configs deployed together from compose files.

`compose` reads the files (YAML, variables interpolated from the environment and `.env`, checked against a JSON
schema, merged in order); `convert` turns the result into the API objects `docker stack deploy` would make,
named `<stack>_<name>` and labelled `com.docker.stack.namespace=<stack>` (pure); the CLI (`shoal.cli.stack`)
compares them with what the swarm holds and creates, updates or removes only what differs.
"""

NAMESPACE_LABEL = "com.docker.stack.namespace"
IMAGE_LABEL = "com.docker.stack.image"


class StackError(Exception):
    """A compose file that cannot be deployed: one line saying where and why."""
