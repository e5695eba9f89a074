"""The audit record: what it keeps of each write, its bound across rotation, and the API
recording every write (refused ones too) with its caller, and nothing else."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest
from apikit import Served, as_holder, free_port, http, role_tokens, served

from fleetd.daemon.audit import AUDIT_FILE, AuditLog

CONFIG_TOKEN = "s3cret-s3cret-s3cret"


def test_records_get_a_seq_that_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / AUDIT_FILE
    log = AuditLog(str(path), clock=lambda: 1234.5)
    first = log.record({"who": "alice", "method": "POST"})
    assert first == {"seq": 1, "time": 1234.5, "who": "alice", "method": "POST"}
    log.record({"who": "bob"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = AuditLog(str(path))
    assert again.seq == 2 and [r["who"] for r in again.records()] == ["alice", "bob"]
    assert again.record({"who": "carol"})["seq"] == 3
    assert [r["who"] for r in again.records(after=1)] == ["bob", "carol"]
    assert [r["who"] for r in again.records(limit=1)] == ["carol"]


def test_rotation_keeps_it_bounded_and_the_seq_going(tmp_path: Path) -> None:
    path = tmp_path / AUDIT_FILE
    log = AuditLog(str(path), max_bytes=2000)
    for i in range(300):
        log.record({"who": f"user-{i}", "method": "POST", "path": "/v1/units/state"})
    files = sorted(os.listdir(tmp_path))
    assert files == [AUDIT_FILE, f"{AUDIT_FILE}.1"]
    assert all(os.path.getsize(tmp_path / f) <= 2000 for f in files)
    kept = log.records()
    assert kept[-1]["seq"] == 300 and [r["seq"] for r in kept] == list(
        range(kept[0]["seq"], 301))
    assert AuditLog(str(path), max_bytes=2000).seq == 300


def test_a_torn_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / AUDIT_FILE
    log = AuditLog(str(path))
    log.record({"who": "a"})
    with open(path, "a") as f:
        f.write('{"seq": 2, "who": "tor')  # a crash mid-write
    assert [r["who"] for r in AuditLog(str(path)).records()] == ["a"]


def test_an_unwritable_record_is_logged_and_the_request_stands(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / AUDIT_FILE).mkdir()  # EISDIR on every append
    log = AuditLog(str(tmp_path / AUDIT_FILE))
    assert log.record({"who": "a", "method": "POST", "path": "/v1/x"})["seq"] == 1
    assert "cannot record POST /v1/x by a" in caplog.text


def test_wait_answers_when_a_record_comes() -> None:
    async def go(tmp: str) -> Tuple[Any, Any, float]:
        log = AuditLog(os.path.join(tmp, AUDIT_FILE))
        asyncio.get_running_loop().call_later(0.1, log.record, {"who": "late"})
        t0 = time.monotonic()
        got = await log.wait(0, 5.0, 10)
        none = await log.wait(1, 0.05, 10)
        return got, none, time.monotonic() - t0

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        got, none, took = asyncio.run(go(tmp))
    assert [r["who"] for r in got] == ["late"] and none == [] and took < 2.0


# --- through the API ---------------------------------------------------------------------------
@pytest.fixture
def tcp(tmp_path: Path) -> Iterator[Tuple[Served, Dict[str, bytes]]]:
    with served(tmp_path, listen=f"127.0.0.1:{free_port()}", token=CONFIG_TOKEN) as s:
        yield s, role_tokens(str(tmp_path / "api.sock"))


tcp_call = as_holder


def test_every_write_is_recorded_with_its_caller(tcp: Tuple[Served, Dict[str, bytes]],
                                                 tmp_path: Path) -> None:
    s, token = tcp
    sock = str(tmp_path / "api.sock")
    tcp_call(s, token["read"], "GET", "/v1/units")  # a read: not recorded
    tcp_call(s, token["operate"], "POST", "/v1/units/state",
             {"names": ["web.service"], "desired": "launched"})
    tcp_call(s, token["read"], "POST", "/v1/units/restart", {"names": ["web.service"]})
    tcp_call(s, b"Bearer nope-nope-nope-nope", "DELETE", "/v1/machines/m1")
    tcp_call(s, token["admin"], "PUT", "/v1/secrets/db_password",
             {"value": "hunter2-in-the-body"})
    status, answer = tcp_call(s, token["admin"], "GET", "/v1/audit")
    assert status == 200
    rows = [(r["who"], r["method"], r["route"], r["target"], r["status"])
            for r in answer["records"]]
    assert rows[:3] == [  # the three tokens made on the socket
        ("root (unix socket)", "POST", "/v1/tokens", f"{role}-bot", 201)
        for role in ("read", "operate", "admin")]
    assert rows[3][:4] == ("operate-bot", "POST", "/v1/units/state", "web.service")
    assert rows[3][4] != 403
    assert rows[4] == ("read-bot", "POST", "/v1/units/restart", "web.service", 403)
    assert rows[5] == ("(no valid token)", "DELETE", "/v1/machines/{name}", "m1", 401)
    assert rows[6][:4] == ("admin-bot", "PUT", "/v1/secrets/{name}", "db_password")
    assert len(rows) == 7
    assert all(r["from"] == "127.0.0.1" for r in answer["records"][3:])
    assert answer["records"][0]["from"] == "unix socket"
    audit_bytes = (tmp_path / "state" / AUDIT_FILE).read_bytes()
    assert b"hunter2" not in audit_bytes and b"fltk_" not in audit_bytes
    # only an admin reads it
    assert tcp_call(s, token["operate"], "GET", "/v1/audit")[0] == 403
    assert http(sock, "GET", "/v1/audit?after=6")[1]["records"][0]["seq"] == 7


def test_a_write_whose_client_went_away_is_recorded(tcp: Tuple[Served, Dict[str, bytes]],
                                                    tmp_path: Path) -> None:
    s, token = tcp
    # a write that waits: POST /v1/units with a long body never sent whole
    sock = socket.create_connection(s.config.listen_host_port)
    sock.sendall(b"POST /v1/units HTTP/1.1\r\nHost: f\r\nAuthorization: " + token["operate"]
                 + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    time.sleep(0.3)
    sock.close()
    deadline = time.monotonic() + 10
    while True:
        records = http(str(tmp_path / "api.sock"), "GET", "/v1/audit")[1]["records"]
        if records and records[-1]["route"] == "/v1/units":
            break
        assert time.monotonic() < deadline, records
        time.sleep(0.05)
    assert (records[-1]["who"], records[-1]["status"]) == ("operate-bot", 499)
