"""`GET /info` (`docker info`): shoal's node and swarm, with the engine's own figures where tasks run on one.

A node on the docker executor runs its tasks as containers of its Docker Engine: its containers, images,
storage driver, kernel, runtimes, … are that engine's, so `docker info` shows them as a Docker node would.
The node's identity (ID, Name), the server version and the Swarm section stay shoal's.
"""

from __future__ import annotations

from typing import Any

from shoal.api.proxy import EngineProxy
from shoal.errors import ShoalError
from shoal.timeouts import within
from shoal.types import Doc

ENGINE_INFO_TIMEOUT = 3.0  # seconds `docker info` waits for the engine before answering without its figures
SHOAL_FIELDS = ("ID", "Name", "ServerVersion", "Swarm")  # shoal's answer, whatever the engine says


async def engine_info(proxy: EngineProxy) -> tuple[Doc | None, str]:
    """The engine's own `/info`, or None and why not (it must not hold `docker info` up for long)."""
    try:
        status, body = await within(proxy.get_json("/info"), ENGINE_INFO_TIMEOUT)
    except TimeoutError:
        return None, f"the node's Docker Engine did not answer within {ENGINE_INFO_TIMEOUT:.0f}s"
    except ShoalError as exc:
        return None, exc.message
    except (OSError, ValueError) as exc:
        return None, f"the node's Docker Engine answered /info with no JSON ({exc})"
    if status >= 400 or not isinstance(body, dict):
        message = body.get("message", "") if isinstance(body, dict) else ""
        return None, f"the node's Docker Engine refused /info ({status} {message})".rstrip()
    return body, ""


def merged_info(own: Doc, engine: Doc | None, engine_error: str = "") -> Doc:
    """shoal's `/info` answer over the engine's: the engine's figures, shoal's identity and swarm; the
    warnings of both, and why the engine's figures are missing when they are."""
    merged: dict[str, Any] = dict(engine or {})
    merged.update({key: value for key, value in own.items() if key in SHOAL_FIELDS or key not in merged})
    warnings = [*((engine or {}).get("Warnings") or []), *((own.get("Swarm") or {}).get("Warnings") or [])]
    if engine_error:
        warnings.append(f"WARNING: {engine_error}: the container and image figures are not the engine's")
    merged["Warnings"] = warnings or None
    return merged


__all__ = ["engine_info", "merged_info"]
