"""End to end: `komm-policy serve` in a real uvicorn process on loopback, answering the
captured Stalwart payloads with the shipped policies and the demo SQLite store."""

from __future__ import annotations

import base64
import json
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from .serverproc import Deployment, ServerProcess
from .stalwart_oracle import stalwart_parse_problems
from .test_shipped_policies import EXPECTED

SEED = ('{"context":{"stage":"connect","client":{"ip":"127.0.0.1",'
        '"helo":"test.example.com"}}}')


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return Deployment(tmp_path_factory.mktemp("deployment"))


@pytest.fixture(scope="module")
def server(deployment: Deployment) -> Iterator[ServerProcess]:
    with ServerProcess(deployment, "--no-watch") as running:
        yield running


def test_seed_payload_answers_exactly_accept(server: ServerProcess) -> None:
    response = server.post(SEED)
    assert response.status_code == 200
    assert response.content == b'{"action":"accept"}'
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_fixture_gets_the_implied_decision(name: str, server: ServerProcess,
                                                 stalwart_fixtures: dict[str, bytes]) -> None:
    response = server.post(stalwart_fixtures[name])
    assert response.status_code == 200
    assert stalwart_parse_problems(response.content) == []
    body = response.json()
    action, reply, _rule = EXPECTED[name]
    assert body["action"] == {"tempfail": "reject", "quarantine": "accept"}.get(action, action)
    if reply is None:
        assert "response" not in body
    else:
        got = body["response"]
        assert f"{got['status']} {got['enhanced_status']} {got['message']}" == reply
        assert got["enhancedStatus"] == got["enhanced_status"]
        assert got["disconnect"] is False


def test_list_mail_gets_its_category_header(server: ServerProcess,
                                            stalwart_fixtures: dict[str, bytes]) -> None:
    body = server.post(stalwart_fixtures["derived-data-1"]).json()
    assert body == {"action": "accept", "modifications": [
        {"type": "addHeader", "name": "X-Komm-Category", "value": "Info"}]}


def test_quarantine_is_an_accept_that_redirects(server: ServerProcess,
                                                stalwart_fixtures: dict[str, bytes]) -> None:
    request = json.loads(stalwart_fixtures["derived-data-1"])
    request["message"]["headers"].append(["X-Spam-Flag", " YES\r\n"])
    response = server.post(json.dumps(request))
    assert stalwart_parse_problems(response.content) == []
    body = response.json()
    assert body["action"] == "accept"
    types = [(m["type"], m.get("name") or m.get("value")) for m in body["modifications"]]
    assert types == [
        ("addHeader", "X-Komm-Quarantine"),
        ("addHeader", "X-Komm-Original-Recipients"),
        ("deleteRecipient", "info@solawi.example"),
        ("addRecipient", "quarantine@solawi.example"),
    ]


def test_stage_names_are_case_insensitive(server: ServerProcess) -> None:
    response = server.post(SEED.replace('"connect"', '"CONNECT"'))
    assert response.status_code == 200
    assert response.json() == {"action": "accept"}


@pytest.mark.parametrize(("body", "path", "message"), [
    ("{not json", "$", "invalid JSON"),
    ("", "$", "invalid JSON"),
    ('{"context":{"stage":"connect","client":{"ip":"127.0.0.1","port":"25"}}}',
     "$.context.client.port", "Expected `int`, got `str`"),
    ('{"context":{"stage":"connect","client":{"ip":"not-an-ip"}}}',
     "$.context.client.ip", "not an IP address"),
    ('{"context":{"stage":"smtp","client":{"ip":"127.0.0.1"}}}',
     "$.context.stage", "unknown stage"),
    ('{"context":{"stage":"rcpt"}}', "$.context", "missing required field `client`"),
    ('[1, 2]', "$", "Expected `object`, got `array`"),
])
def test_malformed_requests_get_400_naming_the_path(server: ServerProcess, body: str,
                                                    path: str, message: str) -> None:
    response = server.post(body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["path"] == path
    assert message in response.json()["error"]


def test_an_unknown_stage_is_not_echoed_whole(server: ServerProcess) -> None:
    """A 3 MB stage name got a 3 MB 400 back (tester's finding): it is bounded like every
    other text field (wire.MAX_TEXT), so the answer stays small."""
    response = server.post(SEED.replace('"connect"', '"' + "s" * 3_000_000 + '"'))
    assert response.status_code == 400
    assert response.json()["path"] == "$.context.stage"
    assert len(response.content) < 1000


def test_wrong_method_gets_405(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/mta-hook")
    assert response.status_code == 405
    assert response.json() == {"error": "Method Not Allowed"}
    assert "POST" in response.headers["allow"]


def test_health_readiness_and_metrics(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["rules"] > 0
    server.post(SEED)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert ('komm_hook_requests_total{action="accept",rule="trusted_network",'
            'stage="connect"}') in metrics
    assert "komm_hook_request_seconds_bucket" in metrics
    assert "komm_decision_log_queue_depth" in metrics


def test_oversized_bodies_get_413(tmp_path) -> None:
    deployment = Deployment(tmp_path)
    with ServerProcess(deployment, "--no-watch", KOMM_MAX_BODY_BYTES="4096") as server:
        big = json.dumps({"context": {"stage": "connect", "client": {"ip": "127.0.0.1"}},
                          "padding": "x" * 5000})
        assert server.post(big).status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: enforced while reading
            for _ in range(10):
                yield b" " * 1000
        response = httpx.post(f"{server.url}/mta-hook", content=chunks())
        assert response.status_code == 413
        assert "exceeds 4096 bytes" in response.json()["error"]
        assert server.post(SEED).status_code == 200


def test_token_is_required_when_configured(tmp_path) -> None:
    deployment = Deployment(tmp_path)
    with ServerProcess(deployment, "--no-watch", KOMM_TOKEN="s3cret-token") as server:
        assert server.post(SEED).status_code == 401
        wrong = server.post(SEED, headers={"authorization": "Bearer wrong"})
        assert wrong.status_code == 401
        assert wrong.json() == {"error": "invalid token"}
        bearer = server.post(SEED, headers={"authorization": "Bearer s3cret-token"})
        assert bearer.status_code == 200
        basic = base64.b64encode(b"stalwart:s3cret-token").decode()
        assert server.post(SEED, headers={"authorization": f"Basic {basic}"}).json() == {
            "action": "accept"}
        bad_basic = base64.b64encode(b"stalwart:nope").decode()
        assert server.post(SEED, headers={"authorization": f"Basic {bad_basic}"}
                           ).status_code == 401


def test_decision_log_has_one_record_per_request_and_is_flushed_on_shutdown(
        tmp_path, stalwart_fixtures: dict[str, bytes]) -> None:
    deployment = Deployment(tmp_path)
    server = ServerProcess(deployment, "--no-watch").start()
    names = sorted(stalwart_fixtures)
    for name in names:
        assert server.post(stalwart_fixtures[name]).status_code == 200
    server.post("{broken")  # refused before a decision: not a decision record
    # uvicorn shuts down gracefully, then re-raises SIGTERM as its exit status
    assert server.stop() in (0, -signal.SIGTERM)
    records = [json.loads(line) for line in deployment.log_file.read_text().splitlines()]
    assert len(records) == len(names)
    assert len({r["id"] for r in records}) == len(names)
    rcpt = next(r for r in records if r["stage"] == "rcpt" and r["action"] == "reject"
                and r["rule"]["name"] == "not_allowed_to_post")
    assert rcpt["client_ip"] == "198.51.100.23"
    assert rcpt["sender"] == "anna.mueller@gmail.com"
    assert rcpt["recipients"] == ["info@solawi.example", "gemuese@solawi.example"]
    assert rcpt["reply"] == {"status": 550, "enhanced": "5.7.1",
                             "message": "You are not allowed to post to this list"}
    assert rcpt["rule"]["file"].endswith("20-envelope.policy")
    # category(), is_admin() and subscribed() of the directory file, as their table reads
    assert [x["function"] for x in rcpt["lookups"]] == [
        "lookup(message_categories: active, email_address)",
        "lookup_all(account: email, is_active)", "exists(admin_identities: identity)",
        "exists(subscriptions: active, category_id, subscriber_account_id)"]
    assert rcpt["duration_ms"] > 0
    assert len(rcpt["policy_version"]) == 12
    data = next(r for r in records if r["queue_id"] == "482806d63a41001")
    assert data["stage"] == "data"
    text = deployment.log_file.read_text()
    assert "Hallo zusammen" not in text  # no message bodies in the log
    with sqlite3.connect(deployment.database) as conn:
        ids = {row[0] for row in conn.execute("SELECT id FROM mta_log")}
    assert ids == {r["id"] for r in records}


def test_client_ips_can_be_redacted(tmp_path) -> None:
    deployment = Deployment(tmp_path)
    server = ServerProcess(deployment, "--no-watch", "--redact-client-ip").start()
    server.post(SEED)
    server.stop()
    record = json.loads(deployment.log_file.read_text().splitlines()[0])
    assert record["client_ip"] is None
    assert "127.0.0.1" not in deployment.log_file.read_text()


def test_shadow_mode_answers_accept_and_logs_the_real_decision(
        tmp_path, stalwart_fixtures: dict[str, bytes]) -> None:
    deployment = Deployment(tmp_path)
    server = ServerProcess(deployment, "--no-watch", "--shadow").start()
    response = server.post(stalwart_fixtures["derived-rcpt-2"])
    assert response.content == b'{"action":"accept"}'
    server.stop()
    record = json.loads(deployment.log_file.read_text().splitlines()[0])
    assert record["action"] == "reject"
    assert record["answered"] == "accept"


def _blocked_reply(server: ServerProcess, fixtures: dict[str, bytes]) -> str:
    body = server.post(fixtures["derived-connect-2"]).json()
    return body.get("response", {}).get("message", "")


def test_hot_reload_applies_good_edits_and_keeps_old_set_on_broken_ones(
        tmp_path, stalwart_fixtures: dict[str, bytes]) -> None:
    deployment = Deployment(tmp_path)
    with ServerProcess(deployment) as server:
        assert _blocked_reply(server, stalwart_fixtures) == "IP blocked"
        connection = deployment.policies / "10-connection.policy"
        connection.write_text(connection.read_text().replace(
            '"IP blocked"', '"Blocked: {client.ip}"'))
        assert wait_for(lambda: _blocked_reply(server, stalwart_fixtures)
                        == "Blocked: 2001:db8:4860:4864::1b")
        (deployment.policies / "99-broken.policy").write_text(
            "stage connect {\n  rule oops: when client.ip = 1.2.3.4 reject\n}\n")
        assert wait_for(lambda: 'komm_policy_reloads_total{result="failed"} 1.0'
                        in httpx.get(f"{server.url}/metrics").text)
        assert _blocked_reply(server, stalwart_fixtures) == "Blocked: 2001:db8:4860:4864::1b"
        assert "99-broken.policy:2:29: error E005" in server.output()


def test_an_edit_of_the_schema_file_alone_reloads(tmp_path) -> None:
    """breaker3 #9: only `.policy` files were watched; a schema.toml edit (a new enum
    variant, an address annotation, or a broken file) did nothing until SIGHUP."""
    deployment = Deployment(tmp_path)
    with ServerProcess(deployment) as server:
        schema = deployment.policies / "schema.toml"
        good = schema.read_text()
        schema.write_text(good + "\ncolumns.bogus = { type = \n")
        assert wait_for(lambda: 'komm_policy_reloads_total{result="failed"} 1.0'
                        in httpx.get(f"{server.url}/metrics").text)
        assert "schema.toml" in server.output() and "E144" in server.output()
        ready = httpx.get(f"{server.url}/readyz").json()
        assert ready["status"] != "ok" and "E144" in str(ready), ready  # says why
        schema.write_text(good)  # put back: the running set is current again
        assert wait_for(lambda: httpx.get(f"{server.url}/readyz").json()["status"] == "ok")


def test_sighup_reloads(tmp_path, stalwart_fixtures: dict[str, bytes]) -> None:
    deployment = Deployment(tmp_path)
    with ServerProcess(deployment, "--no-watch") as server:
        connection = deployment.policies / "10-connection.policy"
        connection.write_text(connection.read_text().replace('"IP blocked"', '"Go away"'))
        time.sleep(0.3)
        assert _blocked_reply(server, stalwart_fixtures) == "IP blocked"  # not watching
        server.signal(signal.SIGHUP)
        assert wait_for(lambda: _blocked_reply(server, stalwart_fixtures) == "Go away")


def test_directory_failure_gives_the_policy_fallback(
        tmp_path, stalwart_fixtures: dict[str, bytes]) -> None:
    deployment = Deployment(tmp_path)
    with ServerProcess(deployment, "--no-watch", KOMM_REFRESH_INTERVAL="0.05",
                       KOMM_MAX_STALENESS="0.2") as server:
        assert server.post(stalwart_fixtures["derived-rcpt-1"]).json() == {"action": "accept"}
        for suffix in ("", "-wal", "-shm"):
            path = deployment.database.with_name(deployment.database.name + suffix)
            path.unlink(missing_ok=True)

        def fallback() -> bool:
            body = server.post(stalwart_fixtures["derived-rcpt-1"]).json()
            return body.get("response", {}).get("status") == 451
        assert wait_for(fallback)
        response = server.post(stalwart_fixtures["derived-rcpt-1"])
        assert response.status_code == 200
        assert response.json()["response"] == {
            "status": 451, "enhanced_status": "4.3.0",
            "message": "Directory temporarily unavailable, please try again later",
            "disconnect": False, "enhancedStatus": "4.3.0"}
        assert httpx.get(f"{server.url}/readyz").status_code == 503
        # rules that need no lookup still decide normally
        assert server.post(SEED).json() == {"action": "accept"}
