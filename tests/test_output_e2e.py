"""End to end: what a real `komm-policy serve` process sends back is safe (issue #8).

The shipped set plus the issue's forwarding rule (and its siblings), served by uvicorn on
loopback; hostile header values go in as Stalwart would send them, and every answer is
checked as Stalwart would parse it (`stalwart_oracle`) and as the next hop would read it
(`sent`).  One server for the whole file; the decision log is read after shutdown.
"""

from __future__ import annotations

import json
import signal
from typing import Any

from .sent import address_problems, header_problems, read_back
from .serverproc import Deployment, ServerProcess
from .stalwart_oracle import stalwart_parse_problems

EXTRA = """
stage data {
    rule forward:
        when header("X-Forward-To") != none
        add_recipient header("X-Forward-To")
        continue

    rule bounce_to:
        when header("X-Bounce-To") != none
        change_from header("X-Bounce-To")
        continue

    rule show_helo:
        when header("X-Show-Helo") != none
        add_header "X-HELO" client.helo
        continue

    rule mark_subject:
        when header("X-Mark-Subject") != none
        change_header "Subject" "[extern] {subject}"
        continue
}
"""
INJECTION = "=?us-ascii?q?kasse@solawi.example=0D=0ARCPT_TO:<x@evil.example>?="
FALLBACK = {"status": 451, "enhanced_status": "4.3.0",
            "message": "Directory temporarily unavailable, please try again later",
            "disconnect": False, "enhancedStatus": "4.3.0"}


def payload(fixture: bytes, *headers: tuple[str, str], helo: str | None = None) -> str:
    """The fixture with `headers` in place of any of the same names."""
    request = json.loads(fixture)
    names = {name.lower() for name, _ in headers}
    request["message"]["headers"] = [
        h for h in request["message"]["headers"] if h[0].lower() not in names]
    request["message"]["headers"].extend([name, f" {value}\r\n"] for name, value in headers)
    if helo is not None:
        request["context"]["client"]["helo"] = helo
    return json.dumps(request)


def check_sent(body: dict[str, Any]) -> None:
    for mod in body.get("modifications", ()):
        if mod["type"] in ("addRecipient", "changeFrom", "deleteRecipient"):
            assert address_problems(mod["value"]) == [], mod
        elif "value" in mod and mod["type"] != "replaceContents":
            assert header_problems(mod["name"], mod["value"]) == [], mod


def test_what_the_server_sends_is_safe(tmp_path, stalwart_fixtures: dict[str, bytes]) -> None:
    deployment = Deployment(tmp_path)
    (deployment.policies / "40-forward.policy").write_text(EXTRA)
    list_mail = stalwart_fixtures["derived-data-1"]
    server = ServerProcess(deployment, "--no-watch").start()
    try:
        def post(body: str) -> dict[str, Any]:
            response = server.post(body)
            assert response.status_code == 200
            assert stalwart_parse_problems(response.content) == []
            decoded = response.json()
            check_sent(decoded)
            return decoded

        # §1: the example, for add_recipient and change_from: never sent.
        for name in ("X-Forward-To", "X-Bounce-To"):
            body = post(payload(list_mail, (name, INJECTION)))
            assert body == {"action": "reject", "response": FALLBACK}
        # a clean address is sent as it is
        body = post(payload(list_mail, ("X-Forward-To", "kasse@solawi.example")))
        assert body["modifications"][-1] == {"type": "addRecipient",
                                             "value": "kasse@solawi.example"}
        # §2: the HELO with NUL and ESC
        body = post(payload(list_mail, ("X-Show-Helo", "1"),
                            helo="mx\u0000\u001b.sender.example"))
        assert {"type": "addHeader", "name": "X-HELO",
                "value": "mx??.sender.example"} in body["modifications"]
        # §3: a long non-ASCII subject is encoded and folded; the shipped category as is
        subject = "Grüße aus der Gemüsekiste, " * 60
        body = post(payload(list_mail, ("X-Mark-Subject", "1"), ("Subject", subject)))
        (changed,) = [m for m in body["modifications"] if m["type"] == "changeHeader"]
        assert read_back(changed["value"]) == "[extern] " + subject.strip()
        assert {"type": "addHeader", "name": "X-Komm-Category", "value": "Info"} in (
            body["modifications"])
        # quarantine: the shipped spam rule, its headers clean
        body = post(payload(list_mail, ("X-Spam-Flag", "YES")))
        assert body["modifications"][-1] == {"type": "addRecipient",
                                             "value": "quarantine@solawi.example"}
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
    records = [json.loads(line) for line in deployment.log_file.read_text().splitlines()]
    refused = [r for r in records if r.get("fallback")]
    assert [r["rule"]["name"] for r in refused] == ["forward", "bounce_to"]
    for record in refused:
        assert "is not one valid address; nothing was sent" in record["cause"]
