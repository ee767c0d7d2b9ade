"""The one exception tree of shoal.

Every error a user can cause is a ShoalError subclass carrying the HTTP status the API answers with, so
the API layer maps exceptions to responses in one place and the CLI prints one line.
"""

from __future__ import annotations


class ShoalError(Exception):
    """Base of every error shoal reports to a user."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ShoalError):
    """The request is malformed or asks for something impossible (400)."""

    status = 400


class TooLarge(InvalidArgument):
    """A request body or a spec larger than shoal keeps."""

    status = 413


class NotFound(ShoalError):
    """The named object does not exist (404)."""

    status = 404


class Conflict(ShoalError):
    """The request clashes with the current state, e.g. a duplicate name (409). From the store, `keys` names the
    keys whose checks failed, so a writer of many can retry the others at once."""

    status = 409

    def __init__(self, message: str, keys: list[str] | None = None) -> None:
        super().__init__(message)
        self.keys = list(keys or [])


class SequenceConflict(Conflict):
    """An update was based on a stale version of the object."""

    def __init__(self, message: str = "update out of sequence", keys: list[str] | None = None) -> None:
        super().__init__(message, keys)


class NotImplementedByShoal(ShoalError):
    """The route exists in Docker's API but shoal does not serve it here (501)."""

    status = 501


class Unavailable(ShoalError):
    """The node is in the wrong swarm state for the request, or the store cannot be reached (503)."""

    status = 503


class NotAManager(Unavailable):
    def __init__(self, worker: bool = False) -> None:
        if worker:
            super().__init__(
                "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. "
                "Please run this command on a manager node or promote the current node to a manager."
            )
        else:
            super().__init__(
                'This node is not a swarm manager. Use "shoal swarm init" or "shoal swarm join" to connect '
                "this node to swarm and try again."
            )


class SwarmLocked(Unavailable):
    def __init__(self) -> None:
        super().__init__("Swarm is encrypted and needs to be unlocked before it can be used. Please use "
                         "\"shoal swarm unlock\" to unlock it.")


class AlreadyInSwarm(Unavailable):
    def __init__(self) -> None:
        super().__init__(
            'This node is already part of a swarm. Use "shoal swarm leave" to leave this swarm and join another one.'
        )


class NotInSwarm(Unavailable):
    def __init__(self) -> None:
        super().__init__("This node is not part of a swarm")


class JoinRefused(ShoalError):
    """A join was refused: wrong or rotated token, wrong address, CA mismatch (400)."""

    status = 400


class NotLeader(Unavailable):
    """A leader-only write was fenced off: this manager no longer holds the leader lease."""

    def __init__(self) -> None:
        super().__init__("this manager is no longer the leader")


class NoQuorum(Unavailable):
    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "The swarm does not have a leader. It's possible that too few managers are online (quorum lost). "
            "Make sure more than half of the managers are online." + (f" ({detail})" if detail else "")
        )
