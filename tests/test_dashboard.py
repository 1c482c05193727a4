"""The dashboard in a real headless browser (Debian's chromium + chromium-driver, via selenium).

Signs in with a `read` key, checks the balance, plan, chart, models, recent
replies and projection against the API, that the key is in no page, URL or
cookie, and saves a screenshot to test-artifacts/dashboard.png. The browser
is installed with apt-get when missing; without it the test fails in CI.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from gateway.storage.database import apply_entry as apply
from gateway.storage.database import transaction
from gateway.types import BillingMode, EntryKind, LedgerEntry
from tests.conftest import service_missing
from tests.harness import RunningGateway
from tests.lifecycle_support import chat, wait_for

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--window-size=1400,1250"]
DAY = 86_400_000


def browser_binaries() -> tuple[str, str]:
    """chromium and chromedriver, installed from Debian's packages if they are missing."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if (not found[0] or not found[1]) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600,
                       check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], env=env,
                       capture_output=True, timeout=900, check=False)
        found = shutil.which("chromium"), shutil.which("chromedriver")
    if not found[0] or not found[1]:
        service_missing("chromium and chromium-driver (apt-get install chromium chromium-driver)")
    assert found[0] and found[1]
    return found[0], found[1]


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for tests
    try:
        chrome = webdriver.Chrome(options=options,
                                  service=Service(executable_path=driver, env={**os.environ, "TZ": "UTC"}))
    except WebDriverException as exc:
        service_missing(f"a working headless chromium ({exc.msg})")
        raise
    try:
        yield chrome
    finally:
        chrome.quit()


def seed(gateway: RunningGateway) -> tuple[str, str, int]:
    """A Pro workspace 15 days into its period, a top-up, 10 days of replies by three agents."""
    anchor = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=15)).isoformat()
    ws = gateway.accounts.create_workspace("Acme support", "pro", anchor_date=anchor)
    key = gateway.accounts.create_key(ws.id, scopes=("read",)).key
    period = gateway.accounts.balance(ws.id)["period_start"]
    gateway.accounts.apply(gateway.accounts.topup_entry(ws.id, 500, ref="invoice-1", actor="test"))
    # From a minute past today's midnight (UTC, the browser's zone too): each day's replies
    # stay on their day whatever the time the test runs.
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=1, second=0, microsecond=0)
    base = int(today.timestamp() * 1000)
    plan = {"support-bot": ("gpt-4o", 5, 14), "triage": ("claude-haiku-4-5", 2, 25),
            "writer": ("gpt-4o-mini", 1, 40)}
    spent = 0
    with transaction(gateway.engine) as (cur, sql):
        for day in range(10):
            for agent, (model, credits, per_day) in plan.items():
                for i in range(per_day - day if agent == "triage" else per_day):
                    spent += credits
                    apply(cur, sql, LedgerEntry(
                        request_id=f"req_{uuid.uuid4().hex}", workspace_id=ws.id,
                        billing_mode=BillingMode.METERED, credits=credits, allotment_delta=-credits,
                        period_start=period, agent_id=agent, conversation_id=f"conv-{i % 4}",
                        model=model, provider="openai", replies=1, latency_ms=300,
                        created_ms=base - day * DAY + i * 60_000))
    return ws.id, key, spent


def wait(browser: webdriver.Chrome, condition: Any, timeout: float = 15) -> Any:
    return WebDriverWait(browser, timeout).until(condition)


def text(browser: webdriver.Chrome, element_id: str) -> str:
    value: str = browser.find_element(By.ID, element_id).text
    return value


def test_sign_in_and_see_balance_chart_models_and_projection(
    gateway: RunningGateway, browser: webdriver.Chrome, caplog: pytest.LogCaptureFixture,
) -> None:
    ws, key, spent = seed(gateway)
    balance = gateway.balance(key)
    assert balance["balance"] == 40_000 + 500 - spent
    browser.get(gateway.url + "/dashboard")
    form = wait(browser, lambda b: b.find_element(By.ID, "signin").is_displayed())
    assert form

    # A wrong key is refused on the page.
    browser.find_element(By.ID, "key").send_keys("bk_not-a-real-key")
    browser.find_element(By.ID, "signin-button").click()
    wait(browser, lambda b: "Incorrect API key" in b.find_element(By.ID, "signin-error").text)

    browser.find_element(By.ID, "key").send_keys(key)
    browser.find_element(By.ID, "signin-button").click()
    try:
        wait(browser, lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true")
    except TimeoutException:
        pytest.fail(f"the dashboard did not load: {text(browser, 'signin-error')!r}")

    assert text(browser, "balance") == f"{balance['balance']:,}"
    assert text(browser, "plan") == "Pro"
    assert text(browser, "allotment") == "40,000"
    assert text(browser, "renews") == balance["period_end"]
    assert text(browser, "workspace") == "Acme support"  # the name; the id is its tooltip
    assert browser.find_element(By.ID, "workspace").get_attribute("title") == ws
    projection = text(browser, "projection")
    assert "runs out" in projection or "lasts past" in projection

    # The chart: one bar segment per agent and day, adding up to the usage API's figures.
    with gateway.client(key) as c:
        start = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=29)).isoformat()
        usage = c.get("/v1/usage", params={"group_by": "agent", "start": start}).json()
    rects = browser.find_elements(By.CSS_SELECTOR, "#chart rect")
    by_agent: dict[str, int] = {}
    for rect in rects:
        agent = rect.get_attribute("data-agent") or ""
        by_agent[agent] = by_agent.get(agent, 0) + int(rect.get_attribute("data-credits") or 0)
    assert by_agent == {r["agent"]: r["credits"] for r in usage["data"]} == \
        {"support-bot": 700, "triage": 410, "writer": 400}
    assert len(rects) == 30  # 10 days x 3 agents
    legend = text(browser, "legend")
    assert "support-bot" in legend and "triage" in legend and "writer" in legend
    models = text(browser, "models")
    assert "gpt-4o" in models and "claude-haiku-4-5" in models and "700" in models
    assert len(browser.find_elements(By.CSS_SELECTOR, "#recent tbody tr")) == 15

    # The key is nowhere: not in the page, the URL or the cookie; the cookie is HttpOnly, Strict.
    assert key not in browser.page_source and key not in browser.current_url
    assert browser.find_element(By.ID, "key").get_attribute("value") == ""
    cookies = {c["name"]: c for c in browser.get_cookies()}
    session = cookies["bookbag_session"]
    assert session["httpOnly"] is True and session["sameSite"] == "Strict"
    assert key not in session["value"]
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: scripts cannot read it
    assert key not in caplog.text

    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))

    # Signing out ends the session on the server too.
    browser.find_element(By.ID, "signout").click()
    wait(browser, lambda b: b.find_element(By.ID, "signin").is_displayed())
    with gateway.client() as c:
        c.cookies.set("bookbag_session", session["value"])
        assert c.get("/v1/balance").status_code == 401


def test_session_cookie_reads_but_never_runs_inference(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    with gateway.client() as c:
        signed = c.post("/dashboard/session", json={"key": key})
        assert signed.status_code == 200, signed.text
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert key not in cookie
        assert c.get("/v1/balance").json()["workspace_id"] == ws
        assert c.get("/v1/usage").status_code == 200
        chat = c.post("/v1/chat/completions", json={
            "model": "bookbag-local", "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 401  # the cookie is for reading only
        page = c.get("/dashboard")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert c.get("/dashboard/static/app.js").status_code == 200
    inference_only = gateway.key(ws, scopes=("inference",))
    with gateway.client() as c:
        refused = c.post("/dashboard/session", json={"key": inference_only})
        assert refused.status_code == 403 and "set-cookie" not in refused.headers
        form = c.post("/dashboard/session", data={"key": key}, follow_redirects=False)
        assert form.status_code == 303 and form.headers["location"] == "/dashboard"
    gateway.accounts.revoke_key(gateway.accounts.keys(ws)[0].id)
    with gateway.client() as c:
        c.cookies.set("bookbag_session", form.cookies["bookbag_session"])
        assert c.get("/v1/balance").status_code == 401  # the session died with its key


def test_a_cross_site_sign_in_post_is_refused(gateway: RunningGateway) -> None:
    """Login CSRF: another site's form posting a key of its own signs nobody in here."""
    _, key = gateway.workspace("free")
    own = gateway.url  # http://127.0.0.1:<port>, the Host the client sends
    with gateway.client() as c:
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                        {"Origin": own.replace("127.0.0.1", "localhost")},
                        {"Sec-Fetch-Site": "cross-site"}):
            r = c.post("/dashboard/session", data={"key": key}, headers=headers,
                       follow_redirects=False)
            assert r.status_code == 403, (headers, r.status_code)
            assert r.json()["error"]["code"] == "cross_origin"
            assert "set-cookie" not in r.headers
        same = c.post("/dashboard/session", data={"key": key}, follow_redirects=False,
                      headers={"Origin": own, "Sec-Fetch-Site": "same-origin"})
        assert same.status_code == 303 and "bookbag_session" in same.headers["set-cookie"]
        assert c.post("/dashboard/session", json={"key": key}).status_code == 200  # no Origin


def test_before_sign_in_no_sign_out_no_401s_and_negative_top_ups_subtract(
    gateway: RunningGateway, browser: webdriver.Chrome,
) -> None:
    ws = gateway.accounts.create_workspace("Globex", "free")
    key = gateway.accounts.create_key(ws.id, scopes=("read",)).key
    gateway.accounts.apply(gateway.accounts.topup_entry(ws.id, -300, kind=EntryKind.ADJUSTMENT,
                                                        ref="correction-1", actor="test"))
    browser.get(gateway.url + "/dashboard")
    wait(browser, lambda b: b.find_element(By.ID, "signin").is_displayed())
    assert not browser.find_element(By.ID, "signout").is_displayed()
    assert not browser.find_element(By.ID, "who").is_displayed()
    console = browser.get_log("browser")
    assert not [e for e in console if e["level"] == "SEVERE"], console

    browser.find_element(By.ID, "key").send_keys(key)
    browser.find_element(By.ID, "signin-button").click()
    wait(browser, lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true")
    assert browser.find_element(By.ID, "signout").is_displayed()
    assert text(browser, "workspace") == "Globex"
    assert text(browser, "balance-split") == "100 allotment − 300 top-ups"
    assert text(browser, "topups") == "-300"
    assert not browser.find_element(By.ID, "caps-card").is_displayed()  # an uncapped key
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_a_capped_key_sees_its_caps_and_what_is_left(
    gateway: RunningGateway, browser: webdriver.Chrome,
) -> None:
    ws, _ = gateway.workspace("free")
    created = gateway.accounts.create_key(ws, agent_id="triage")
    gateway.accounts.set_cap(ws, "key", created.id, 7)
    gateway.accounts.set_cap(ws, "agent", "triage", 50)
    wait_for(lambda: gateway.balance(created.key).get("caps"), what="the caps reaching the key cache")
    assert chat(gateway, created.key, model="gpt-4o-mini").status_code == 200  # 1 credit, both caps
    balance = gateway.balance(created.key)
    assert [c["used"] for c in balance["caps"]] == [1, 1]
    browser.get(gateway.url + "/dashboard")
    wait(browser, lambda b: b.find_element(By.ID, "signin").is_displayed())
    browser.find_element(By.ID, "key").send_keys(created.key)
    browser.find_element(By.ID, "signin-button").click()
    wait(browser, lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true")
    assert browser.find_element(By.ID, "caps-card").is_displayed()
    rows = {r.get_attribute("data-kind"): [c.text for c in r.find_elements(By.TAG_NAME, "td")]
            for r in browser.find_elements(By.CSS_SELECTOR, "#caps tbody tr")}
    resets = balance["period_end"]
    assert rows == {"key": [f"key {created.id}", "7", "1", "6", resets],
                    "agent": ["agent triage", "50", "1", "49", resets]}
