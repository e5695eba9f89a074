"""``[X-Check]``: a unit's health check, validated at submit time for the agent to run.

The agent runs the check on the unit's own host (fleetd/agent/health.py) and reports
``passing``/``failing``; with ``OnFailure=restart`` (the default) a failing check
restarts the program through its restart policy, the way systemd treats a watchdog
timeout. Everything is checked here, so the agent never meets a value it cannot use.

``Type=``             ``http``, ``tcp`` or ``exec`` (required)
``URL=``              http: ``http://HOST[:PORT][/PATH][?QUERY]``; plain HTTP only (the
                      agent speaks just enough HTTP/1.0 to read a status line)
``ExpectStatus=``     http: statuses that pass: codes and ranges, ``200-399`` (default)
                      or ``200 204 300-308``
``Address=``          tcp: ``HOST:PORT`` (``[::1]:6379`` for IPv6), or ``HOST`` with
``Port=``             tcp: the port; alone it means 127.0.0.1
``Command=``          exec: split like ExecStart= (quotes, escapes, ``$VAR`` expanded by
                      the agent in the unit's environment); exit 0 passes
``Interval=``         time between checks (default 10s, at least 1s)
``Timeout=``          how long one check may take (default 2s; shorter than Interval=)
``StartGrace=``       failures in this time after the program starts do not count
                      (default 0); a passing check ends the grace early
``FailureThreshold=`` consecutive failures that make the unit ``failing`` (default 3)
``SuccessThreshold=`` consecutive passes that make it ``passing`` (default 1)
``OnFailure=``        ``restart`` (default) or ``none`` (only report the health)

Hosts. A check must look at the unit's own program, so its host is meant to be a
loopback address (127.0.0.1, ::1, localhost) or ``{{ machine.address }}`` for programs
that bind only their machine's address. fleetd validates twice: at submit time, with
``{{ machine.* }}`` rendered as an opaque placeholder (``@machine.address@``), and at
placement, with the machine's real address, which may be an IP or a DNS name. The second
validation cannot tell a rendered address from a typed one, and refusing there would
fail a unit long after fleetctl said it was fine, so any well-formed host passes; what
is refused (early) is a placeholder for a machine fact that is not an address
(``{{ machine.name }}`` need not resolve). A template's ``{{ vars.port }}`` left open at
submit time is a placeholder too, and is accepted where a port goes.

A Type=oneshot unit may not have a check: its program is meant to exit. The result
is plain JSON (it travels in the desired set); None when there is no [X-Check]
section. A section header with no options in it is no check, as systemd keeps no
trace of empty sections either.
"""

from __future__ import annotations

import ipaddress
import re
from typing import List, Optional, Tuple

from fleetd.units.context import UnitContext, later
from fleetd.units.parser import Entry, UnitError
from fleetd.wire.unitspec import Check, Command

X = "X-Check"
KNOWN = ("Type", "URL", "ExpectStatus", "Address", "Port", "Command", "Interval", "Timeout",
         "StartGrace", "FailureThreshold", "SuccessThreshold", "OnFailure")
TYPES = ("http", "tcp", "exec")
ON_FAILURE = ("restart", "none")
# options read only by one check type: naming them under another type is a mistake
_ONLY_FOR = {"URL": "http", "ExpectStatus": "http", "Address": "tcp", "Port": "tcp",
             "Command": "exec"}

DEFAULT_INTERVAL_S = 10.0
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_START_GRACE_S = 0.0
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_SUCCESS_THRESHOLD = 1
DEFAULT_EXPECT_STATUS = [[200, 399]]
DEFAULT_TCP_HOST = "127.0.0.1"
# A check is a connection or a process: sub-second checks on a hundred units would cost
# the host more than the programs they watch.
MIN_INTERVAL_S = 1.0
MAX_THRESHOLD = 10000  # consecutive results; more would never be reached in practice

# render.py's stand-in for a value not known at submit time: @machine.address@, @vars.port@
_PLACEHOLDER = re.compile(r"@(?:machine|vars)(?:\.[A-Za-z_][A-Za-z0-9_]*|\[[^\]@]*\])*@")
_ADDRESS_PLACEHOLDER = "@machine.address@"
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
_PATH_CHARS = re.compile(r"[!-~]*")  # printable ASCII without spaces: one request-line word


def config(ctx: UnitContext) -> Optional[Check]:
    """The validated check of this unit (see the module docstring), or None."""
    entries = list(ctx.file.section(X))
    if not entries:
        return None
    ctx.check_known(X, KNOWN)
    if ctx.single("Service", "Type") == "oneshot":
        raise UnitError(ctx.source, entries[0].line,
                        "[X-Check] on a Type=oneshot unit: its program is meant to exit, "
                        "and a check would judge (and restart) it while it runs its course")
    type_entry = ctx.entry(X, "Type")
    kind = ctx.single(X, "Type")
    if kind is None:
        raise UnitError(ctx.source, entries[0].line,
                        f"[X-Check] needs Type= ({', '.join(TYPES)})")
    if kind not in TYPES:
        ctx.fail(type_entry, f"{kind!r} is not a check type ({', '.join(TYPES)})")
    for key, only in _ONLY_FOR.items():
        entry = ctx.entry(X, key)
        if only != kind and entry is not None:
            ctx.fail(entry, f"only read with Type={only} (this check is Type={kind})")
    out: Check = {"type": kind}
    if kind == "http":
        _http(ctx, type_entry, out)
    elif kind == "tcp":
        _tcp(ctx, type_entry, out)
    else:
        out["command"] = _command(ctx, type_entry)
    _timing(ctx, out)
    out["on_failure"] = _on_failure(ctx)
    return out


# --- http ----------------------------------------------------------------------------
def _http(ctx: UnitContext, type_entry: Optional[Entry], out: Check) -> None:
    url = ctx.single(X, "URL")
    if url is None:
        ctx.fail(type_entry, "Type=http needs URL= (like http://127.0.0.1:8080/health)")
    entry = ctx.entry(X, "URL")
    scheme, sep, rest = url.partition("://")
    if not sep:
        ctx.fail(entry, f"{url!r} is not a URL: want http://HOST[:PORT]/PATH")
    if scheme.lower() == "https":
        ctx.fail(entry, "https is not supported: the agent checks over plain HTTP on the "
                        "unit's own host (use the program's plain-HTTP port, or Type=tcp)")
    if scheme.lower() != "http":
        ctx.fail(entry, f"{scheme}:// is not supported (want http://)")
    if "#" in rest:
        ctx.fail(entry, "a #fragment is never sent to the server: remove it")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, target = rest[:cut], rest[cut:]
    if not authority:
        ctx.fail(entry, f"{url!r} names no host")
    host, port = _host_port(ctx, entry, authority, default_port=80)
    if target.startswith("?"):
        target = "/" + target
    target = target or "/"
    if not _PATH_CHARS.fullmatch(target):
        ctx.fail(entry, "the path may not hold spaces or control characters "
                        "(write a space as %%20: % starts a specifier in unit files)")
    # RFC 7230 5.4: Host is the URL's authority as written (brackets and port included)
    out["url"] = url
    out["host"] = host
    out["port"] = port
    out["path"] = target
    out["host_header"] = authority
    out["expect_status"] = _expect_status(ctx)


def _expect_status(ctx: UnitContext) -> List[List[int]]:
    value = ctx.single(X, "ExpectStatus")
    if value is None:
        return [list(r) for r in DEFAULT_EXPECT_STATUS]
    entry = ctx.entry(X, "ExpectStatus")
    ranges: List[List[int]] = []
    for word in value.replace(",", " ").split():
        m = re.fullmatch(r"([0-9]{3})(?:-([0-9]{3}))?", word)
        if not m:
            ctx.fail(entry, f"{word!r}: want a status like 200 or a range like 200-399")
        low, high = int(m.group(1)), int(m.group(2) or m.group(1))
        if not 100 <= low <= high <= 599:
            ctx.fail(entry, f"{word!r}: HTTP statuses run from 100 to 599, low to high")
        ranges.append([low, high])
    return ranges


# --- tcp -----------------------------------------------------------------------------
def _tcp(ctx: UnitContext, type_entry: Optional[Entry], out: Check) -> None:
    address = ctx.single(X, "Address")
    port_value = ctx.single(X, "Port")
    port_entry = ctx.entry(X, "Port")
    port: Optional[int] = None
    if port_value is not None:
        port = _port(ctx, port_entry, port_value)
    if address is None:
        if port_value is None:
            ctx.fail(type_entry, "Type=tcp needs Address=HOST:PORT or Port=")
        out["host"] = DEFAULT_TCP_HOST
        out["port"] = port
        return
    entry = ctx.entry(X, "Address")
    if "/" in address or "://" in address:
        ctx.fail(entry, f"{address!r}: want HOST:PORT, not a URL")
    has_port = _has_port(address)
    if has_port and port_value is not None:
        ctx.fail(later(entry, port_entry), "the port is given twice: in Address= and Port=")
    if not has_port and port_value is None:
        ctx.fail(entry, f"{address!r} has no port: write HOST:PORT or add Port=")
    host, address_port = _host_port(ctx, entry, address, default_port=None)
    out["host"] = host
    out["port"] = address_port if has_port else port


def _has_port(authority: str) -> bool:
    if authority.startswith("["):
        return "]:" in authority
    placeholder = _PLACEHOLDER.match(authority)
    if placeholder:
        return authority[placeholder.end():].startswith(":")
    return ":" in authority


# --- exec ----------------------------------------------------------------------------
def _command(ctx: UnitContext, type_entry: Optional[Entry]) -> Command:
    entry = ctx.entry(X, "Command")
    if entry is None or entry.value == "":
        ctx.fail(type_entry, "Type=exec needs Command= (like Command=redis-cli -p 6379 ping)")
    command = ctx.command(entry)
    if command.ignore_failure:
        ctx.fail(entry, "a '-' prefix would make every result a pass: remove it")
    return command.to_json()


# --- hosts and ports -----------------------------------------------------------------
def _host_port(ctx: UnitContext, entry: Optional[Entry], authority: str,
               default_port: Optional[int]) -> Tuple[str, Optional[int]]:
    """``HOST[:PORT]`` -> (host, port); the port is None while it is a placeholder.
    IPv6 hosts come back without their brackets (what a socket connect wants)."""
    placeholder = _PLACEHOLDER.match(authority)
    if "@" in _PLACEHOLDER.sub("", authority):
        ctx.fail(entry, "a user name or password in the address is not supported")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            ctx.fail(entry, f"{authority!r}: unbalanced [ around an IPv6 address")
        host, rest = authority[1:end], authority[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            ctx.fail(entry, f"[{host}] is not an IPv6 address")
    elif placeholder:
        host, rest = placeholder.group(0), authority[placeholder.end():]
    else:
        host, colon, port_text = authority.rpartition(":")
        if not colon:
            host, rest = authority, ""
        else:
            rest = ":" + port_text
        if ":" in host:
            ctx.fail(entry, f"{authority!r}: write an IPv6 address in brackets, [::1]:PORT")
    if rest and not rest.startswith(":"):
        ctx.fail(entry, f"{authority!r}: unexpected {rest!r} after the host")
    _check_host(ctx, entry, host)
    if not rest:
        return host, default_port
    return host, _port(ctx, entry, rest[1:])


def _check_host(ctx: UnitContext, entry: Optional[Entry], host: str) -> None:
    if _PLACEHOLDER.fullmatch(host):
        if host.startswith("@machine.") and host != _ADDRESS_PLACEHOLDER:
            fact = "{{ " + host.strip("@") + " }}"
            ctx.fail(entry, f"{fact} is not an address the agent can connect to; "
                            "use 127.0.0.1 or {{ machine.address }}")
        return
    if ":" in host:
        return  # an IPv6 literal, already parsed
    try:
        ipaddress.IPv4Address(host)
        return
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host) or not _HOSTNAME.fullmatch(host):
        ctx.fail(entry, f"{host!r} is not a host name or an IP address "
                        "(the check runs on the unit's own host: 127.0.0.1, localhost, "
                        "or {{ machine.address }})")


def _port(ctx: UnitContext, entry: Optional[Entry], text: str) -> Optional[int]:
    if _PLACEHOLDER.fullmatch(text) and text.startswith("@vars"):
        return None  # a template's variable, checked when the instance is submitted
    return ctx.whole(entry, text, 1, 65535, "the port")


# --- timing and policy ---------------------------------------------------------------
def _timing(ctx: UnitContext, out: Check) -> None:
    interval = _span(ctx, "Interval", DEFAULT_INTERVAL_S)
    if interval < MIN_INTERVAL_S:
        ctx.fail(ctx.entry(X, "Interval"), f"at least {MIN_INTERVAL_S:g}s: every check is "
                                           "a connection or a process on the host")
    timeout = _span(ctx, "Timeout", DEFAULT_TIMEOUT_S)
    if timeout >= interval:
        # blame whichever the user wrote (Timeout= if both): that is what to change
        entry = ctx.entry(X, "Timeout") or ctx.entry(X, "Interval")
        ctx.fail(entry, f"Timeout= ({timeout:g}s) must be shorter than Interval= "
                        f"({interval:g}s): checks must not overlap")
    out["interval_s"] = interval
    out["timeout_s"] = timeout
    out["start_grace_s"] = _span(ctx, "StartGrace", DEFAULT_START_GRACE_S, zero_ok=True)
    out["failure_threshold"] = _count(ctx, "FailureThreshold", DEFAULT_FAILURE_THRESHOLD)
    out["success_threshold"] = _count(ctx, "SuccessThreshold", DEFAULT_SUCCESS_THRESHOLD)


def _span(ctx: UnitContext, key: str, default: float, zero_ok: bool = False) -> float:
    """ctx.timespan, finite (and above 0 unless ``zero_ok``); the defaults are."""
    seconds = ctx.finite_timespan(X, key, default)
    if seconds == 0 and not zero_ok:
        ctx.fail(ctx.entry(X, key), "must be more than 0")
    return seconds


def _count(ctx: UnitContext, key: str, default: int) -> int:
    return ctx.count(X, key, default, 1, MAX_THRESHOLD)


def _on_failure(ctx: UnitContext) -> str:
    value = ctx.single(X, "OnFailure") or "restart"
    if value not in ON_FAILURE:
        ctx.fail(ctx.entry(X, "OnFailure"), f"{value!r} is not one of {', '.join(ON_FAILURE)}")
    return value


def acts_on_failing(check: Optional[Check]) -> bool:
    """Does a ``failing`` verdict of this check config (``config``'s result; None: no
    [X-Check]) end the program? OnFailure=restart (the default) does: the agent ends the
    run and Restart= judges it; OnFailure=none only reports the health. Pure, for both
    sides: the agent's checker acts on it, fleetd's wait verdicts expect it."""
    return check is not None and check.get("on_failure") == "restart"
