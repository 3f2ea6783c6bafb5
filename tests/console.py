#!/usr/bin/env python3
"""The operator console in real browsers: headless Chromium (Debian's package) driven by
Playwright, and headless Firefox ESR (Debian's package) driven by Selenium through geckodriver
(WebDriver BiDi), against `tradecloud-bridge run` in development mode (embedded queue, the
Tradecloud simulator, the console on with the development credentials and replay on).

It makes one delivered trigger and three dead letters: three orders Tradecloud refuses for now
(`rejected`, a 400 the simulator answers until healed; development mode publishes order messages
v2, which deliver a badly typed event with warnings rather than dead-letter it). Then, in the browser: the console shows the live charts and the dead letters
grouped by reason; the operator heals the order, replays its dead letter (confirming the dialog)
and sees it marked replayed; the journal search shows that trigger delivered after the replay.
The console's JSON API is checked for the same. Firefox then does the same with a dead letter of
its own: the charts are drawn, the letter is shown in its group with its history, the replay is
confirmed and the letter is marked replayed, with no script error in either browser.
Screenshots go to docs/console-*.png with --screenshots.

Usage: python3 tests/console.py target/debug/tradecloud-bridge [--screenshots]
"""

import base64
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from playwright.sync_api import expect, sync_playwright

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Chromium on a machine without internet: no background connections, no sandbox as root.
FIREFOX = os.environ.get("FIREFOX", "/usr/bin/firefox-esr")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def wait(what, check, within=30.0):
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Bridge:
    def __init__(self, binary, data):
        self.ready = os.path.join(data, "ready.json")
        self.log = open(os.path.join(data, "bridge.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "run", "--data-dir", data, "--listen", "127.0.0.1:0",
             "--admin-listen", "127.0.0.1:0", "--ready-file", self.ready],
            stdout=self.log, stderr=self.log, env={**os.environ, "RUST_LOG": "warn"})
        info = wait("the bridge to start", lambda: self._ready())
        self.ingress = info["ingress"]
        self.admin = f"http://{info['admin']}"
        self.simulator = info["simulator"]
        creds = json.load(open(os.path.join(data, "dev-credentials.json")))
        self.user, self.password = creds["username"], creds["password"]
        self.auth = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        self.tls = ssl.create_default_context(cafile=os.path.join(data, "dev-ca.pem"))
        # Development mode's Tradecloud simulator serves HTTPS with a CA of its own.
        self.sim_tls = ssl.create_default_context(cafile=os.path.join(data, "simulator-ca.pem"))

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"the bridge exited with {self.proc.returncode}")
        try:
            return json.load(open(self.ready))
        except (OSError, ValueError):
            return None

    def webhook(self, path, body=None):
        port = self.ingress.rsplit(":", 1)[1]
        req = urllib.request.Request(
            f"https://localhost:{port}/webhook{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": self.auth, "Content-Type": "application/json"},
            method="GET" if body is None else "POST")
        with urllib.request.urlopen(req, context=self.tls, timeout=10) as r:
            assert r.status == 200, r.status
            return json.load(r)["triggerId"]

    def webhook_status(self, path, auth):
        """A GET webhook with the given Authorization; its status."""
        port = self.ingress.rsplit(":", 1)[1]
        req = urllib.request.Request(f"https://localhost:{port}/webhook{path}", headers={"Authorization": auth})
        try:
            with urllib.request.urlopen(req, context=self.tls, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def api(self, path, auth=True):
        headers = {"Authorization": self.auth} if auth else {}
        req = urllib.request.Request(self.admin + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def simulate(self, path):
        req = urllib.request.Request(self.simulator + path, data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10, context=self.sim_tls) as r:
            assert r.status == 200

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def dead_letter_kinds(bridge):
    status, body = bridge.api("/console/api/dead-letters")
    assert status == 200, body
    return {g["kind"]: g for g in body["groups"]}


def journal_stages(bridge, query, trigger):
    status, body = bridge.api("/console/api/journal?q=" + urllib.parse.quote(query))
    assert status == 200, body
    return [e["stage"] for e in body["entries"] if e["trigger_id"] == trigger]


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/tradecloud-bridge")
    screenshots = "--screenshots" in sys.argv
    with tempfile.TemporaryDirectory() as data:
        bridge = Bridge(binary, data)
        try:
            run(bridge, screenshots)
            run_firefox(bridge)
        finally:
            bridge.stop()
    print("test result: ok. 1 passed; 0 failed; (tests/console.py)")


def run(bridge, screenshots):
    # Without credentials: 401 and a Basic challenge, for the page and every API call.
    for path in ("/console", "/console/api/overview", "/console/api/dead-letters",
                 "/console/api/journal?q=x"):
        req = urllib.request.Request(bridge.admin + path)
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError(f"{path} answered without credentials")
        except urllib.error.HTTPError as e:
            assert e.code == 401, (path, e.code)
            assert e.headers["WWW-Authenticate"].startswith("Basic "), path

    delivered = bridge.webhook("/console-ok-order")
    # Orders Tradecloud refuses (400, until healed): each GET ends as a `rejected` dead letter.
    bad = []
    for i in range(2):
        bridge.simulate(f"/sim/orders/console-bad-{i}/fail/400")
        bad.append(bridge.webhook(f"/console-bad-{i}"))
    bridge.simulate("/sim/orders/console-refused/fail/400")
    refused = bridge.webhook("/console-refused")
    kinds = wait("three dead letters", lambda: (lambda k: k if sum(g["count"] for g in k.values()) == 3 else None)(dead_letter_kinds(bridge)))
    assert list(kinds) == ["rejected"] and kinds["rejected"]["count"] == 3, kinds
    assert refused in [l["trigger_id"] for l in kinds["rejected"]["letters"]], kinds
    wait("the delivered trigger", lambda: journal_stages(bridge, "console-ok-order", delivered)[-1:] == ["published"])

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(http_credentials={"username": bridge.user, "password": bridge.password},
                                      viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(bridge.admin + "/console")
        expect(page.locator("h1")).to_have_text("tradecloud-bridge")
        # Live charts: every series has its card; after two polls, rates are drawn.
        expect(page.locator(".chart")).to_have_count(12)
        expect(page.locator("#status")).to_contain_text("updated", timeout=10_000)
        expect(page.locator('.chart[data-series="dead_lettered"] polyline')).to_have_count(1, timeout=10_000)
        # Traffic while the page watches: the received and delivered rates rise above 0.
        sender = threading.Thread(target=lambda: [(bridge.webhook(f"/console-live-{i % 5}"), time.sleep(0.1))
                                                   for i in range(60)])
        sender.start()
        for series in ("received", "delivered"):
            expect(page.locator(f'.chart[data-series="{series}"] .value')).not_to_have_text(
                re.compile(r"^0\.0"), timeout=15_000)
        # 4xx by reason, under the refused card.
        expect(page.locator('.chart[data-series="refused"] .reasons')).to_have_text("none")
        wrong = "Basic " + base64.b64encode(b"tradecloud:wrong-password").decode()
        assert bridge.webhook_status("/console-unauthorized", wrong) == 401
        expect(page.locator('.chart[data-series="refused"] .reasons')).to_have_text(
            "unauthorized 1", timeout=10_000)
        # Dead letters grouped by reason, with payload and error history.
        expect(page.locator('details.group[data-kind="rejected"] tbody tr')).to_have_count(3)
        row = page.locator(f'tr[data-trigger="{refused}"]')
        expect(row).to_contain_text("console-refused")
        row.locator("summary").click()
        expect(row.locator("pre.history")).to_contain_text("last error: Tradecloud answered 400")
        expect(row.locator("pre.payload")).to_contain_text('"orderId": "console-refused"')
        if screenshots:
            time.sleep(4)  # a few more points on the charts
            page.screenshot(path=os.path.join(ROOT, "docs", "console-dead-letters.png"), full_page=True)
        sender.join()

        # The cause is fixed; the operator replays that one dead letter and confirms.
        bridge.simulate("/sim/orders/console-refused/heal")
        page.on("dialog", lambda d: d.accept())
        row.locator("input.pick").check()
        expect(page.locator("#replay-selected")).to_be_enabled()
        page.locator("#replay-selected").click()
        expect(page.locator("#replay-mode")).to_have_text("replayed 1", timeout=15_000)
        expect(page.locator(f'tr[data-trigger="{refused}"] .replayed')).to_be_visible(timeout=15_000)
        # The others stay dead letters, not replayed.
        for t in bad:
            expect(page.locator(f'tr[data-trigger="{t}"] .replayed')).to_have_count(0)

        # The journal shows the replayed trigger delivered, found by its order id in the page.
        wait("the replayed trigger's delivery",
             lambda: journal_stages(bridge, "console-refused", refused)[-1:] == ["published"])
        page.locator("#q").fill("console-refused")
        page.locator("#search-form button").click()
        stages = page.locator(f'#journal-results tr[data-stage]')
        expect(stages.last).to_have_attribute("data-stage", "published", timeout=10_000)
        expect(page.locator('#journal-results tr[data-stage="replayed"]')).to_have_count(1)
        expect(page.locator('#journal-results tr[data-stage="dead_lettered"]')).to_have_count(1)
        if screenshots:
            page.locator("#journal").scroll_into_view_if_needed()
            page.screenshot(path=os.path.join(ROOT, "docs", "console-journal.png"), full_page=True)
        # By time alone: every trigger since then (the delivered one among them).
        page.locator("#q").fill("")
        page.locator("#since").fill("2000-01-01T00:00")
        page.locator("#search-form button").click()
        expect(page.locator(f'#journal-results td:text-is("{delivered}")').first).to_be_visible(timeout=10_000)
        page.locator("#since").fill("")
        assert not errors, errors
        browser.close()

    # The JSON API says the same: stages in order, found by order id and by PO number.
    journey = ["accepted", "fetch_failed", "dead_lettered", "replayed", "fetched", "published"]
    got = journal_stages(bridge, "console-refused", refused)
    assert got in (journey, journey[:1] + journey[2:]), got
    po = "PO-EREFUSED"
    assert journal_stages(bridge, po, refused) == got, journal_stages(bridge, po, refused)
    assert journal_stages(bridge, "PO-EOKORDER", delivered) == ["accepted", "fetched", "published"]
    # Replay without the console's header is refused (no cross-site form can send it).
    req = urllib.request.Request(bridge.admin + "/console/api/replay", data=b'{"kind":"rejected"}',
                                 headers={"Authorization": bridge.auth, "Content-Type": "application/json"},
                                 method="POST")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("a replay without X-Console was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 400, e.code


def run_firefox(bridge):
    """The console in Firefox: charts, a dead letter with its history, replay with confirmation."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.firefox.service import Service
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    bridge.simulate("/sim/orders/console-firefox/fail/400")
    letter = bridge.webhook("/console-firefox")
    wait("the Firefox dead letter", lambda: any(
        l["trigger_id"] == letter for l in dead_letter_kinds(bridge).get("rejected", {}).get("letters", [])))

    options = webdriver.FirefoxOptions()
    options.binary_location = FIREFOX
    options.add_argument("-headless")
    options.enable_bidi = True
    # The replay's confirmation stays open for the test to accept.
    options.unhandled_prompt_behavior = "ignore"
    # No background connections on a machine without internet.
    for pref, value in (("app.update.enabled", False), ("browser.shell.checkDefaultBrowser", False),
                        ("network.captive-portal-service.enabled", False),
                        ("datareporting.policy.dataSubmissionEnabled", False),
                        ("toolkit.telemetry.enabled", False)):
        options.set_preference(pref, value)
    geckodriver = os.environ.get("GECKODRIVER") or shutil.which("geckodriver") or os.path.expanduser(
        "~/.cargo/bin/geckodriver")
    service = Service(executable_path=geckodriver, log_output=subprocess.DEVNULL)
    driver = webdriver.Firefox(options=options, service=service)
    try:
        errors = []
        driver.script.add_javascript_error_handler(lambda e: errors.append(getattr(e, "text", str(e))))
        driver.network.add_auth_handler(bridge.user, bridge.password)
        driver.set_window_size(1280, 900)
        driver.get(bridge.admin + "/console")
        until = WebDriverWait(driver, 15)
        assert driver.find_element(By.TAG_NAME, "h1").text == "tradecloud-bridge"
        until.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".chart")) == 12)
        until.until(ec.text_to_be_present_in_element((By.ID, "status"), "updated"))
        until.until(lambda d: d.find_elements(By.CSS_SELECTOR, '.chart[data-series="received"] polyline'))
        # The letter in its group, with its history.
        row = until.until(lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-trigger="{letter}"]'))
        assert "console-firefox" in row.text, row.text
        row.find_element(By.TAG_NAME, "summary").click()
        until.until(lambda d: "last error: Tradecloud answered 400" in row.find_element(
            By.CSS_SELECTOR, "pre.history").text)
        # Healed, replayed and confirmed: marked replayed.
        bridge.simulate("/sim/orders/console-firefox/heal")
        row.find_element(By.CSS_SELECTOR, "input.pick").click()
        until.until(lambda d: d.find_element(By.ID, "replay-selected").is_enabled())
        driver.find_element(By.ID, "replay-selected").click()
        until.until(ec.alert_is_present()).accept()
        until.until(ec.text_to_be_present_in_element((By.ID, "replay-mode"), "replayed 1"))
        until.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-trigger="{letter}"] .replayed'))
        assert not errors, errors
    finally:
        driver.quit()
    wait("the letter replayed in Firefox delivered",
         lambda: journal_stages(bridge, "console-firefox", letter)[-1:] == ["published"])


if __name__ == "__main__":
    main()
