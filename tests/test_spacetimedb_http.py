"""The HTTP client against the SpacetimeDB double on loopback (a real uvicorn server):
captures reproduced byte for byte, real error texts, quoting, faults."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from komm_policy.spacetimedb import (
    Endpoint,
    SpacetimeError,
    SpacetimeHttp,
    quote_ident,
    quote_literal,
)

from .spacetimedb_double import DoubleServer
from .spacetimedb_double.samples import ID_A, SAMPLE_QUERIES, SPEC

SAMPLES = Path(__file__).parent / "fixtures" / "spacetimedb"


@pytest.fixture(scope="module")
def double() -> Iterator[DoubleServer]:
    with DoubleServer(SPEC) as server:
        yield server


@pytest.fixture
def client(double: DoubleServer) -> Iterator[SpacetimeHttp]:
    double.control().reset_faults()
    endpoint = Endpoint.parse(f"spacetimedb://127.0.0.1:{double.port}/samples")
    with SpacetimeHttp(endpoint, double.owner_token, timeout=1) as http:
        yield http


def compact(text: bytes) -> bytes:
    return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize("name", sorted(SAMPLE_QUERIES))
def test_sql_bodies_reproduce_the_captures_byte_for_byte(client: SpacetimeHttp,
                                                         name: str) -> None:
    capture = (SAMPLES / name).read_bytes()
    body = client.sql_body(SAMPLE_QUERIES[name])
    if b"\n  " in capture:  # 01, 02 were pretty-printed by the repositories that kept them
        assert body == compact(capture)
    else:  # 03, 04: exactly as the server sent them (plus the file's newline)
        assert body + b"\n" == capture


def test_sql_response_headers_and_identity(double: DoubleServer,
                                           client: SpacetimeHttp) -> None:
    response = httpx.post(f"{double.base}/v1/database/samples/sql",
                          content=b"SELECT * FROM client",
                          headers={"Authorization": f"Bearer {double.owner_token}"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["spacetime-execution-duration-micros"] == "152"
    assert len(response.headers["spacetime-identity"]) == 64
    assert response.headers["spacetime-identity-token"] == double.owner_token


def test_identity_mints_a_token_that_is_accepted(double: DoubleServer) -> None:
    endpoint = Endpoint.parse(f"spacetimedb://127.0.0.1:{double.port}/samples")
    with SpacetimeHttp(endpoint) as anonymous:
        identity, token = anonymous.identity()
    assert len(identity) == 64 and int(identity, 16) >= 0
    assert token.count(".") == 2
    with SpacetimeHttp(endpoint, token) as http:
        assert http.select_all("currency").rows[0][0] == "GBP"


def test_quoted_literal_matches_only_the_literal_text(client: SpacetimeHttp) -> None:
    hostile = "x' OR 'a'='a"
    result = client.sql(f"SELECT * FROM currency WHERE security_id = {quote_literal(hostile)}")
    assert result.rows == []
    unquoted = f"SELECT * FROM currency WHERE security_id = '{hostile}'"
    with pytest.raises(SpacetimeError) as e:  # what quoting prevents; SpacetimeDB's
        client.sql(unquoted)                  # checker happens to refuse this one
    assert e.value.text == "Cannot resolve type for literal expression"
    result = client.sql(f"SELECT * FROM currency WHERE security_id = {quote_literal('GBP')}")
    assert [r[0] for r in result.rows] == ["GBP"]
    back = "a\\' OR 'a'='a"  # a backslash is an ordinary character
    assert client.sql("SELECT * FROM currency WHERE security_id = "
                      f"{quote_literal(back)}").rows == []


def test_quote_ident() -> None:
    assert quote_ident("blocked_ip") == "blocked_ip"
    assert quote_ident('we"ird name') == '"we""ird name"'


@pytest.mark.parametrize("query,status,text", [
    ("SELECT * FROM nope", 400,
     "no such table: `nope`. If the table exists, it may be marked private."),
    ("SELECT * FROM currency; SELECT * FROM client", 400,
     "Multiple SQL statements are not supported"),
    ("", 400, "Empty SQL query"),
    ("SELECT * FROM currency WHERE security_id = 'open", 400,
     "sql parser error: Unterminated string literal at Line: 1, Column 44"),
    ("SELECT * FROM currency ORDER BY scale", 400, "Unsupported: ORDER BY"),
    ("SELECT * FROM currency WHERE scale = 'abc'", 400,
     "The literal expression `abc` cannot be parsed as type `U8`"),
    ("SELECT * FROM currency WHERE nope = 1", 400, "`nope` is not in scope"),
])
def test_sql_errors_carry_the_servers_texts(client: SpacetimeHttp, query: str, status: int,
                                           text: str) -> None:
    with pytest.raises(SpacetimeError) as e:
        client.sql(query)
    assert (e.value.status, e.value.text) == (status, text)
    assert not e.value.retryable


def test_unknown_database_and_bad_tokens(double: DoubleServer) -> None:
    endpoint = Endpoint.parse(f"spacetimedb://127.0.0.1:{double.port}/missing")
    with SpacetimeHttp(endpoint, double.owner_token) as http, \
            pytest.raises(SpacetimeError) as e:
        http.select_all("x")
    assert (e.value.status, e.value.text) == (404, "`missing` not found")
    endpoint = Endpoint.parse(f"spacetimedb://127.0.0.1:{double.port}/samples")
    with SpacetimeHttp(endpoint, "forged.token.value") as http, \
            pytest.raises(SpacetimeError) as e:
        http.select_all("currency")
    assert e.value.status == 401
    assert e.value.text == "Authorization failed: token not signed by this instance"
    response = httpx.post(f"{double.base}/v1/database/samples/sql", content=b"SELECT 1",
                          headers={"Authorization": "Basic abc"})
    assert (response.status_code, response.text) == (
        400, "Authorization is invalid: malformed token")


def test_private_table_looks_missing_to_others(double: DoubleServer) -> None:
    endpoint = Endpoint.parse(f"spacetimedb://127.0.0.1:{double.port}/types")
    with SpacetimeHttp(endpoint, double.owner_token) as owner:
        assert owner.select_all("secret").rows == [(1, "owner only")]
    with SpacetimeHttp(endpoint) as anonymous, pytest.raises(SpacetimeError) as e:
        anonymous.select_all("secret")
    assert e.value.text.startswith("no such table: `secret`")


def test_schema_v9(double: DoubleServer) -> None:
    endpoint = Endpoint.parse(f"spacetimedb://127.0.0.1:{double.port}/types")
    with SpacetimeHttp(endpoint, double.owner_token) as http:
        module = http.schema()
        raw = http.schema_json()
    assert [t["name"] for t in raw["tables"]] == ["everything", "secret"]
    assert raw["tables"][1]["table_access"] == {"Private": []}
    assert sorted(module.tables) == ["everything", "secret"]
    assert module.tables["everything"].primary_key == (0,)
    response = httpx.get(f"{double.base}/v1/database/types/schema")
    assert response.status_code == 400


def test_faults_5xx_truncated_slow_and_refused(double: DoubleServer,
                                              client: SpacetimeHttp) -> None:
    control = double.control()
    control.faults(http_status=503, http_text="upstream unavailable", http_count=1)
    with pytest.raises(SpacetimeError) as e:
        client.select_all("currency")
    assert (e.value.status, e.value.text, e.value.retryable) == (
        503, "upstream unavailable", True)
    assert client.select_all("currency").rows  # the fault fired once

    control.faults(truncate_count=1)
    with pytest.raises(SpacetimeError, match="not complete JSON") as e:
        client.select_all("currency")
    assert e.value.retryable

    control.faults(slow_ms=4000)
    started = time.monotonic()
    with pytest.raises(SpacetimeError, match="timed out") as e:
        client.select_all("currency")
    # the client's timeout (1 s), not the server's 4 s (the margin is for a loaded machine)
    assert time.monotonic() - started < 3
    assert e.value.retryable
    control.reset_faults()

    endpoint = Endpoint.parse("spacetimedb://127.0.0.1:1/samples")
    with SpacetimeHttp(endpoint, timeout=1) as http, pytest.raises(SpacetimeError) as e:
        http.select_all("currency")
    assert e.value.status is None and e.value.retryable


def test_oversized_answer_is_refused_not_buffered(double: DoubleServer) -> None:
    endpoint = Endpoint.parse(f"spacetimedb://127.0.0.1:{double.port}/samples")
    with SpacetimeHttp(endpoint, double.owner_token, max_body=100) as http, \
            pytest.raises(SpacetimeError, match="larger than 100 bytes"):
        http.select_all("currency")


def test_identity_column_compared_in_sql(client: SpacetimeHttp) -> None:
    result = client.sql(f"SELECT event_id FROM capture_event WHERE identity = "
                        f"{quote_literal('0x' + ID_A)}")
    assert [r[0] for r in result.rows] == [10, 30]


@pytest.mark.parametrize("url,base,db", [
    ("spacetimedb://127.0.0.1:3000/komm", "http://127.0.0.1:3000", "komm"),
    ("spacetimedb+https://db.example.org/komm", "https://db.example.org", "komm"),
    ("spacetimedb://[::1]:3000/c200aa", "http://[::1]:3000", "c200aa"),
])
def test_endpoint_urls(url: str, base: str, db: str) -> None:
    endpoint = Endpoint.parse(url)
    assert (endpoint.base, endpoint.database) == (base, db)
    assert str(endpoint) == url


@pytest.mark.parametrize("url,message", [
    ("sqlite:komm.db", "expected spacetimedb://"),
    ("spacetimedb://user:secret@host/db", "no credentials"),
    ("spacetimedb://host:3000/", "exactly one database"),
    ("spacetimedb://host:99999/db", "out of range"),
])
def test_endpoint_url_errors(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Endpoint.parse(url)


def test_the_double_runs_by_hand_as_a_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    from .spacetimedb_double import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.spacetimedb_double", "--port",
                             str(port), "--owner-token", "tok.en.x"],
                            cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/ping", timeout=0.5).is_success:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        endpoint = Endpoint.parse(f"spacetimedb://127.0.0.1:{port}/samples")
        with SpacetimeHttp(endpoint, "tok.en.x") as http:
            assert http.select_all("capture_event").rows[0][0] == 10
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        with proc.stdout:
            assert b"owner token" in proc.stdout.read()
