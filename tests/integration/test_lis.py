"""A lab report end to end (issue 16): the appliance counts a slide into the store while the LIS is
down, a technician signs it on the display (HTTP, as the page does), the display's LIS link keeps
retrying; the LIS comes up and gets the ORU^R01 once. The page's report downloads, read back."""

from __future__ import annotations

import http.cookiejar
import io
import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from fhir.resources.R4B.bundle import Bundle
from pypdf import PdfReader

from edge.mqtt.broker import free_port
from edge.reports.lis import LisLink, Target
from edge.review.store import SlideStore
from tests.cli_helpers import ROOT
from tests.integration.browser import _spawn
from tests.integration.lis_listener import LisListener

pytestmark = pytest.mark.integration

PIN = "1357"


def _post(opener, url: str, body: dict, csrf: str | None = None) -> dict:
    headers = {"Content-Type": "application/json", **({"X-CSRF-Token": csrf} if csrf else {})}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    with opener.open(request, timeout=30) as reply:
        return json.loads(reply.read())


def test_lis_down_while_counting_and_signing_then_up_gets_the_report_once(broker, samples, tmp_path):
    port = free_port()
    store_path = tmp_path / "slides.sqlite"
    config = tmp_path / "box.yaml"
    config.write_text(
        f"device_id: scope-l\nmqtt:\n  url: {broker.url}\nreview:\n  store: {store_path}\ndisplay:\n  port: 0\n"
        f"reports:\n  lis:\n    host: 127.0.0.1\n    port: {port}\n    retry_s: 0.3\n    timeout_s: 2\n"
    )
    add = subprocess.run(
        [sys.executable, "-m", "edge.cli", "review", "--config", str(config), "operator", "add", "Ana Lima",
         "--pin-stdin"],
        input=PIN + "\n", cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    display = _spawn("display", "--config", str(config))  # its LIS link runs from the start; the LIS is down
    listener = LisListener(port)
    try:
        url = display.stdout.readline().split()[1]  # type: ignore[union-attr]
        run = _spawn("run", "--source", str(samples), "--max-fields", "3", "--config", str(config),
                     "--specimen-id", "BM-9")  # fmt: skip
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        slide_id = next(line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("slide "))

        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        csrf = _post(opener, url + "api/login", {"name": "Ana Lima", "pin": PIN})["csrf"]
        signed = _post(opener, url + f"api/slides/{slide_id}/sign", {"pin": PIN}, csrf)
        assert signed == {"version": 1, "status": "final"}

        store = SlideStore(store_path)
        log = LisLink(store, Target("127.0.0.1", port))  # reads the display's outbox table
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(r["last_error"] for r in log.log_rows()):
            time.sleep(0.1)
        (row,) = log.log_rows()
        # kept and tried, not lost; an unreachable LIS uses up none of the message's attempts
        assert row["state"] == "pending" and row["attempts"] == 0 and "cannot reach" in row["last_error"], row

        listener.start()  # the LIS is back
        assert listener.wait_for(1, timeout_s=20)
        time.sleep(1.5)  # five retry periods more: it is not sent again
        assert len(listener.received) == 1
        message = listener.received[0]
        assert str(message.segment("MSH")[10]) == row["control_id"]
        obr = message.segment("OBR")
        assert (str(obr[2]), str(obr[3]), str(obr[25])) == ("BM-9", slide_id, "F")
        counted = next(s for s in message.segments("OBX") if str(s[3][0][0]) == "38257-2")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and log.log_rows()[0]["state"] != "delivered":
            time.sleep(0.1)
        assert log.log_rows()[0]["state"] == "delivered"

        # the review page's downloads: the signed report in each format
        with opener.open(url + f"api/slides/{slide_id}/report.pdf?paper=letter", timeout=60) as reply:
            assert "attachment" in reply.headers["Content-Disposition"]
            pdf = PdfReader(io.BytesIO(reply.read()))
        assert round(float(pdf.pages[0].mediabox.height)) == 792
        assert "FINAL (version 1), signed by Ana Lima" in pdf.pages[0].extract_text()
        with opener.open(url + f"api/slides/{slide_id}/report.fhir.json", timeout=30) as reply:
            bundle = Bundle.model_validate(json.loads(reply.read()))
        total = next(e.resource for e in bundle.entry if e.resource.__resource_type__ == "Observation"
                     and e.resource.code.coding[0].code == "38257-2")  # fmt: skip
        assert total.valueInteger == int(str(counted[5]))
        store.close()
    finally:
        listener.close()
        display.send_signal(signal.SIGTERM)
        try:
            display.wait(timeout=10)
        except subprocess.TimeoutExpired:
            display.kill()
