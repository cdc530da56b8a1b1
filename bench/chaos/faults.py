"""Doing one fault of the schedule to a running system, and undoing it after its ``down``.

Each fault is a coroutine against the ``System`` protocol (the runner implements it), so this
module holds the what and the order of each fault, not the processes. A fault whose target is
already away (a replica still restarting, a participant still stopped) is skipped and recorded
as such, rather than stacked: two stops of one service would end in one start, and the second
stop's ``down`` would not be the one the schedule says.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

from bench.chaos.scenario import Fault

__all__ = ["FAILOVERS", "Done", "System", "apply"]

#: the ``ha`` scenario's faults, one at a time (a second while one is in hand is skipped)
FAILOVERS = frozenset({"kill_db_primary", "stop_broker_node"})


class System(Protocol):
    async def kill_replica(self, index: int) -> None: ...
    async def start_replica(self, index: int) -> None: ...
    async def stop_broker(self) -> None: ...
    async def start_broker(self) -> None: ...
    async def terminate_sessions(self) -> int: ...
    async def kill_db_primary(self) -> str: ...
    async def rejoin_db_node(self) -> str: ...
    async def stop_broker_node(self) -> str: ...
    async def start_broker_node(self) -> None: ...
    async def stop_service(self, service: str) -> str | None: ...
    async def start_service(self, service: str) -> None: ...
    def busy(self, target: str) -> bool: ...
    def hold(self, target: str, held: bool) -> None: ...


@dataclass
class Done:
    """What happened to one fault: when it began and ended (seconds since the first start), what
    it hit, and why it was skipped or failed, if it was."""

    fault: Fault
    began: float
    ended: float | None = None
    detail: str = ""
    error: str | None = None
    skipped: bool = False


async def apply(system: System, fault: Fault, origin: float) -> Done:
    """Do ``fault`` and, after its ``down``, bring its target back; never raises: a fault the
    system did not survive shows in the checks, a fault that could not be done shows here."""
    done = Done(fault, time.monotonic() - origin)
    # the two failovers never overlap: each one's figure is its own, not the other's outage too
    target = fault.target or ("failover" if fault.kind in FAILOVERS else fault.kind)
    if system.busy(target):
        done.skipped, done.detail, done.ended = True, "target still away", done.began
        return done
    system.hold(target, True)
    try:
        if fault.kind == "kill_replica":
            await system.kill_replica(int(fault.target))
            await asyncio.sleep(fault.down)
            await system.start_replica(int(fault.target))
        elif fault.kind == "restart_broker":
            await system.stop_broker()
            await asyncio.sleep(fault.down)
            await system.start_broker()
        elif fault.kind == "kill_db_primary":
            done.detail = await system.kill_db_primary()
            await asyncio.sleep(fault.down)
            done.detail += f"; {await system.rejoin_db_node()}"
        elif fault.kind == "stop_broker_node":
            done.detail = await system.stop_broker_node()
            await asyncio.sleep(fault.down)
            await system.start_broker_node()
        elif fault.kind == "terminate_sessions":
            done.detail = f"{await system.terminate_sessions()} sessions ended"
        else:
            done.detail = await system.stop_service(fault.target) or ""
            await asyncio.sleep(fault.down)
            await system.start_service(fault.target)
    except Exception as error:
        done.error = f"{type(error).__name__}: {str(error)[:500]}"
    finally:
        system.hold(target, False)
        done.ended = time.monotonic() - origin
    return done
