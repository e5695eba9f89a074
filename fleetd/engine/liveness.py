"""Is a machine up, unreachable or lost? Pure: the daemon's ticker applies the answer.

A machine is *up* while its session is connected and its agent was heard within the
TTL (heartbeats come every ``heartbeat_s``); *unreachable* while the session is down but
the machine was heard within the TTL (a dropped connection, an sshd restart: its units
stay put); *lost* once nothing was heard for longer than the TTL, connected or not (a
partition can leave a TCP connection open and silent). Only a lost machine's units are
rescheduled. fleet waited 30 s (agent_ttl); the default here is 5 s with a 1 s heartbeat.
"""

from __future__ import annotations

from typing import Optional, Tuple

UP = "up"
UNREACHABLE = "unreachable"
LOST = "lost"


def assess(connected: bool, last_seen: Optional[float], now: float, ttl: float
           ) -> Optional[Tuple[str, Optional[str]]]:
    """(state, reason) for a machine, or None when there is nothing to judge by (it was
    never heard from: its state is whatever connecting to it said)."""
    if last_seen is None:
        return None
    silent = now - last_seen
    if silent > ttl:
        return LOST, f"silent for {silent:.1f}s (TTL {ttl:g}s)"
    if connected:
        return UP, None
    return UNREACHABLE, None
