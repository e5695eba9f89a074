"""fleetd.units.xcheck: [X-Check] into the JSON the agent's HealthChecker runs.

Errors must name file:line and the option, and a misspelt option must come with a
suggestion, because a silently ignored health option is a unit that never restarts.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import pytest

from fleetd.units import xcheck
from fleetd.units.context import UnitContext
from fleetd.units.model import parse_name
from fleetd.units.parser import UnitError, parse

SRC = "units/web@1.service"
HEAD = "[Service]\nExecStart=/bin/true\n[X-Check]\n"  # [X-Check] options from line 4

TIMING_DEFAULTS = {"interval_s": 10.0, "timeout_s": 2.0, "start_grace_s": 0.0,
                   "failure_threshold": 3, "success_threshold": 1, "on_failure": "restart"}


def _config(text: str) -> Optional[Dict[str, Any]]:
    ctx = UnitContext(parse(text, SRC), parse_name("web@1.service"), SRC)
    return xcheck.config(ctx)


def _check(body: str) -> Dict[str, Any]:
    found = _config(HEAD + body)
    assert found is not None
    return found


def _error(body: str) -> str:
    with pytest.raises(UnitError) as info:
        _config(HEAD + body)
    return str(info.value)


# --- no check ------------------------------------------------------------------------


def test_no_section_is_no_check() -> None:
    assert _config("[Service]\nExecStart=/bin/true\n") is None


def test_an_empty_section_is_no_check() -> None:
    assert _config(HEAD) is None


# --- http ----------------------------------------------------------------------------


def test_http_defaults() -> None:
    assert _check("Type=http\nURL=http://127.0.0.1:8080/health\n") == {
        "type": "http", "url": "http://127.0.0.1:8080/health", "host": "127.0.0.1",
        "port": 8080, "path": "/health", "host_header": "127.0.0.1:8080",
        "expect_status": [[200, 399]], **TIMING_DEFAULTS,
    }


@pytest.mark.parametrize(
    ("url", "host", "port", "path", "host_header"),
    [
        ("http://localhost/", "localhost", 80, "/", "localhost"),
        ("http://localhost", "localhost", 80, "/", "localhost"),  # no path: /
        ("HTTP://127.0.0.1:81?probe=1", "127.0.0.1", 81, "/?probe=1", "127.0.0.1:81"),
        # % starts a specifier in unit files: a percent-encoded space is written %%20
        ("http://[::1]:9000/a/b?c=d%%20e", "::1", 9000, "/a/b?c=d%20e", "[::1]:9000"),
        ("http://10.78.0.2:8080/ok", "10.78.0.2", 8080, "/ok", "10.78.0.2:8080"),  # rendered
        ("http://h1.example.com:8080/", "h1.example.com", 8080, "/", "h1.example.com:8080"),
        # submit-time probe: {{ machine.address }} and an open {{ vars.port }}
        ("http://@machine.address@:@vars.port@/health", "@machine.address@", None, "/health",
         "@machine.address@:@vars.port@"),
        ("http://127.0.0.1:%i/", "127.0.0.1", 1, "/", "127.0.0.1:1"),  # specifiers expand
    ],
)
def test_http_urls(url: str, host: str, port: Optional[int], path: str,
                   host_header: str) -> None:
    check = _check(f"Type=http\nURL={url}\n")
    assert (check["host"], check["port"], check["path"], check["host_header"]) == \
        (host, port, path, host_header)


@pytest.mark.parametrize(
    ("value", "ranges"),
    [
        ("200", [[200, 200]]),
        ("200-299", [[200, 299]]),
        ("200 204 300-308", [[200, 200], [204, 204], [300, 308]]),
        ("200,404", [[200, 200], [404, 404]]),
        ("", [[200, 399]]),  # an empty assignment resets to the default
    ],
)
def test_expect_status(value: str, ranges: Any) -> None:
    check = _check(f"Type=http\nURL=http://127.0.0.1/\nExpectStatus={value}\n")
    assert check["expect_status"] == ranges


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("Type=http\n", "4: Type=: Type=http needs URL="),
        ("Type=http\nURL=127.0.0.1:8080\n", "5: URL=: '127.0.0.1:8080' is not a URL"),
        ("Type=http\nURL=https://127.0.0.1/\n", "5: URL=: https is not supported"),
        ("Type=http\nURL=ftp://127.0.0.1/\n", "5: URL=: ftp:// is not supported"),
        ("Type=http\nURL=http:///health\n", "5: URL=: 'http:///health' names no host"),
        ("Type=http\nURL=http://u:p@127.0.0.1/\n", "a user name or password"),
        ("Type=http\nURL=http://127.0.0.1/#x\n", "#fragment is never sent"),
        ("Type=http\nURL=http://127.0.0.1/a b\n", "may not hold spaces"),
        ("Type=http\nURL=http://127.0.0.1/a%20b\n", "5: URL=: specifier %2 is not supported"),
        ("Type=http\nURL=http://u@127.0.0.1:80/\n", "a user name or password"),
        ("Type=http\nURL=http://127.0.0.1:0/\n", "5: URL=: the port: want a whole number from 1"),
        ("Type=http\nURL=http://127.0.0.1:70000/\n", "from 1 to 65535, not '70000'"),
        ("Type=http\nURL=http://127.0.0.1:x/\n", "the port: want a whole number"),
        ("Type=http\nURL=http://::1:80/\n", "write an IPv6 address in brackets"),
        ("Type=http\nURL=http://[::1/\n", "unbalanced ["),
        ("Type=http\nURL=http://[nope]:80/\n", "[nope] is not an IPv6 address"),
        ("Type=http\nURL=http://[::1]x/\n", "unexpected 'x' after the host"),
        ("Type=http\nURL=http://bad_host!/\n", "'bad_host!' is not a host name"),
        ("Type=http\nURL=http://999.1.1.1/\n", "'999.1.1.1' is not a host name"),
        ("Type=http\nURL=http://@machine.name@/\n",
         "{{ machine.name }} is not an address the agent can connect to"),
        ("Type=http\nURL=http://127.0.0.1/\nExpectStatus=2xx\n",
         "6: ExpectStatus=: '2xx': want a status like 200"),
        ("Type=http\nURL=http://127.0.0.1/\nExpectStatus=399-200\n",
         "'399-200': HTTP statuses run from 100 to 599"),
        ("Type=http\nURL=http://127.0.0.1/\nExpectStatus=700\n", "'700': HTTP statuses"),
    ],
)
def test_http_errors(body: str, message: str) -> None:
    assert message in _error(body)


# --- tcp -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "host", "port"),
    [
        ("Port=6379\n", "127.0.0.1", 6379),  # Port= alone: loopback
        ("Address=127.0.0.1:6379\n", "127.0.0.1", 6379),
        ("Address=localhost\nPort=5432\n", "localhost", 5432),
        ("Address=[::1]:6379\n", "::1", 6379),
        ("Address=@machine.address@:6379\n", "@machine.address@", 6379),
        ("Address=@machine.address@\nPort=@vars.port@\n", "@machine.address@", None),
    ],
)
def test_tcp(body: str, host: str, port: Optional[int]) -> None:
    assert _check("Type=tcp\n" + body) == {"type": "tcp", "host": host, "port": port,
                                           **TIMING_DEFAULTS}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("Type=tcp\n", "4: Type=: Type=tcp needs Address=HOST:PORT or Port="),
        ("Type=tcp\nAddress=localhost\n", "5: Address=: 'localhost' has no port"),
        ("Type=tcp\nAddress=localhost:1\nPort=2\n",
         "6: Port=: the port is given twice: in Address= and Port="),
        ("Type=tcp\nPort=2\nAddress=localhost:1\n", "6: Address=: the port is given twice"),
        ("Type=tcp\nAddress=http://localhost:1/\n", "want HOST:PORT, not a URL"),
        ("Type=tcp\nPort=65536\n", "5: Port=: the port: want a whole number from 1 to 65535"),
        ("Type=tcp\nPort=@machine.id@\n", "not '@machine.id@'"),
    ],
)
def test_tcp_errors(body: str, message: str) -> None:
    assert message in _error(body)


# --- exec ----------------------------------------------------------------------------


def test_exec_command_is_split_like_exec_start() -> None:
    check = _check("Type=exec\nCommand=redis-cli -p \"${PORT}\" 'ping'\n")
    assert check == {
        "type": "exec",
        "command": {"words": ["redis-cli", "-p", "${PORT}", "ping"], "ignore_failure": False,
                    "argv0_given": False, "no_expand": False, "privileged": False},
        **TIMING_DEFAULTS,
    }


def test_exec_specifiers_expand_in_the_command() -> None:
    assert _check("Type=exec\nCommand=/usr/bin/check %p %i\n")["command"]["words"] == \
        ["/usr/bin/check", "web", "1"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("Type=exec\n", "4: Type=: Type=exec needs Command="),
        ("Type=exec\nCommand=\n", "4: Type=: Type=exec needs Command="),
        ("Type=exec\nCommand=/bin/sh -c 'unbalanced\n", "5: Command=: unbalanced quote"),
        ("Type=exec\nCommand=-/bin/false\n", "5: Command=: a '-' prefix would make every"),
        ("Type=exec\nCommand=a ; b\n", "a lone ';' does not separate commands"),
    ],
)
def test_exec_errors(body: str, message: str) -> None:
    assert message in _error(body)


# --- timing and policy ---------------------------------------------------------------


def test_every_timing_option() -> None:
    check = _check("Type=tcp\nPort=1\nInterval=1min\nTimeout=500ms\nStartGrace=30s\n"
                   "FailureThreshold=5\nSuccessThreshold=2\nOnFailure=none\n")
    assert {k: check[k] for k in TIMING_DEFAULTS} == {
        "interval_s": 60.0, "timeout_s": 0.5, "start_grace_s": 30.0,
        "failure_threshold": 5, "success_threshold": 2, "on_failure": "none"}


def test_the_last_assignment_wins_and_empty_resets() -> None:
    check = _check("Type=tcp\nPort=1\nInterval=5s\nInterval=20s\nFailureThreshold=7\n"
                   "FailureThreshold=\n")
    assert (check["interval_s"], check["failure_threshold"]) == (20.0, 3)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("Interval=fast\n", "6: Interval=: invalid time span 'fast'"),
        ("Interval=2x\n", "6: Interval=: unknown time unit 'x'"),
        ("Interval=500ms\n", "6: Interval=: at least 1s"),
        ("Interval=infinity\n", "6: Interval=: must be a finite time span"),
        ("Timeout=0\n", "6: Timeout=: must be more than 0"),
        ("Timeout=10s\n", "6: Timeout=: Timeout= (10s) must be shorter than Interval= (10s)"),
        # the default Timeout= (2s) against a short Interval=: the Interval= line is blamed
        ("Interval=1s\n", "6: Interval=: Timeout= (2s) must be shorter than Interval= (1s)"),
        ("StartGrace=soon\n", "6: StartGrace=: invalid time span"),
        ("StartGrace=infinity\n", "6: StartGrace=: must be a finite time span"),
        ("FailureThreshold=0\n", "6: FailureThreshold=: want a whole number from 1 to 10000"),
        ("SuccessThreshold=-1\n", "6: SuccessThreshold=: want a whole number from 1"),
        ("OnFailure=reboot\n", "6: OnFailure=: 'reboot' is not one of restart, none"),
    ],
)
def test_timing_errors(body: str, message: str) -> None:
    assert message in _error("Type=tcp\nPort=1\n" + body)


def test_start_grace_may_be_zero() -> None:
    assert _check("Type=tcp\nPort=1\nStartGrace=0\n")["start_grace_s"] == 0.0


# --- the section itself --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("Interval=5s\n", f"{SRC}:4: [X-Check] needs Type= (http, tcp, exec)"),
        ("Type=grpc\n", f"{SRC}:4: Type=: 'grpc' is not a check type (http, tcp, exec)"),
        ("Type=tcp\nPort=1\nIntervall=5s\n",
         f"{SRC}:6: unknown option Intervall= in [X-Check]; did you mean Interval=?"),
        ("Type=http\nUrl=http://127.0.0.1/\n", f"{SRC}:5: unknown option Url= in [X-Check]; "
                                               "did you mean URL=? (option names are "
                                               "case-sensitive)"),
        ("Type=http\nURL=http://127.0.0.1/\ninterval=5s\n", "did you mean Interval=?"),
        ("Type=tcp\nPort=1\nFailureTreshold=2\n", "did you mean FailureThreshold=?"),
        ("Type=tcp\nPort=1\nStartGracePeriod=2\n", "did you mean StartGrace=?"),
        ("Type=tcp\nPort=1\nFrobnicate=1\n", "unknown option Frobnicate= in [X-Check] (known:"),
        # options of another check type are refused, not ignored
        ("Type=tcp\nPort=1\nURL=http://127.0.0.1/\n",
         f"{SRC}:6: URL=: only read with Type=http (this check is Type=tcp)"),
        ("Type=http\nURL=http://127.0.0.1/\nPort=80\n", "Port=: only read with Type=tcp"),
        ("Type=tcp\nPort=1\nExpectStatus=200\n", "ExpectStatus=: only read with Type=http"),
        ("Type=http\nURL=http://127.0.0.1/\nCommand=/bin/true\n",
         "Command=: only read with Type=exec"),
        ("Type=exec\nCommand=/bin/true\nAddress=localhost:1\n",
         "Address=: only read with Type=tcp"),
    ],
)
def test_section_errors(body: str, message: str) -> None:
    assert message in _error(body)


def test_a_oneshot_unit_may_not_have_a_check() -> None:
    with pytest.raises(UnitError) as info:
        _config("[Service]\nType=oneshot\nExecStart=/bin/true\n[X-Check]\nType=exec\n"
                "Command=/bin/true\n")
    assert str(info.value).startswith(f"{SRC}:5: [X-Check] on a Type=oneshot unit")


def test_errors_point_at_the_winning_assignment() -> None:
    # line 4 is overridden by line 7: the error must name line 7, where the bad value is
    assert f"{SRC}:7: OnFailure=" in _error("OnFailure=none\nType=tcp\nPort=1\n"
                                             "OnFailure=explode\n")


def test_the_config_is_plain_json() -> None:
    import json

    check = _check("Type=exec\nCommand=/bin/true\n")
    assert json.loads(json.dumps(check)) == check
