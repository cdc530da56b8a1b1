"""The web console in a real browser: Debian's headless ``chromium``, driven by Playwright, against
a real ``orchestrator run`` with participants and sagas in several states.

An operator filters the list, opens a waiting saga, sees its timeline and its state highlighted
in the diagram, logs in when the service asks, fires its deadline through the confirmation and
sees the saga move; a refusal shows the API's words. Markup and script sent in a saga's key and
payload are shown as text and never run. With protected reads, no token or a wrong one shows the
login prompt and no saga data.

Chromium must be installed (``make browser``): without it these tests fail, they never skip.
With ``CONSOLE_SCREENSHOTS=<dir>`` (``make screenshots``) the first test also saves the pictures
of docs/console.md there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from .conftest import Bench, unique

pytestmark = pytest.mark.integration

keys = unique("console")
ORDER = {"customer_id": "c-1", "lines": [{"sku": "sku-1", "quantity": 1}], "amount_cents": 1000}
ESCROW = {"buyer_id": "b-1", "seller_id": "s-1", "amount_cents": 5000}
#: markup and script in a key and a payload: a page that parsed them would set these flags
HOSTILE_KEY = "<img src=x onerror=window.__pwned_key=1><script>window.__pwned_key=2</script>"
HOSTILE_CUSTOMER = "<script>window.__pwned_data=1</script><svg onload=window.__pwned_data=2>"
GONE = "<img src=x onerror=window.__pwned_letter=1>"
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS")


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed: run `make browser` (apt-get install -y chromium)")
    return path


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium(), headless=True)
        try:
            yield launched
        finally:
            await launched.close()


class Watched:
    """A page whose console and uncaught errors are kept, to show that nothing was blocked or ran."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _console(self, message: ConsoleMessage) -> None:
        self.console.append(f"{message.type}: {message.text}")

    def problems(self) -> list[str]:
        """Uncaught errors and console errors, but for the browser's line about each answer that
        is an HTTP error (the 401s and 409 the test provokes, the 404 of an API without /me)."""
        noted = [m for m in self.console if m.startswith("error") and "Failed to load resource" not in m]
        return self.errors + noted


async def shot(page: Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


async def wait_for(api: httpx.AsyncClient, saga_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        saga: dict[str, Any] = (await api.get(f"/sagas/{saga_id}")).json()
        if saga["state"] == state:
            return saga
        assert time.monotonic() < deadline, f"saga never reached {state}: {saga}"
        await asyncio.sleep(0.1)


async def test_an_operator_finds_a_stuck_order_sees_why_and_acts_on_it(
    bench: Bench, browser: Browser
) -> None:
    # stuck: unfinished, no timer and no progress for a second; reads opened, so that the console
    # shows the sagas before the operator logs in to act (the login first is the test further down)
    await bench.serve(stuck_after_seconds=1.0, api_open_reads=True)
    await bench.start_participants(inventory=("--out-of-stock", "unobtainium"), bank=("--never-answer",))
    completed, compensated, waiting, stuck = keys(), keys(), keys(), keys()
    async with bench.api(actor="checkout") as api:
        for key, data in (
            (completed, ORDER),
            (compensated, {**ORDER, "lines": [{"sku": "unobtainium", "quantity": 1}]}),
            (HOSTILE_KEY, {**ORDER, "customer_id": HOSTILE_CUSTOMER}),
        ):
            started = await api.post("/sagas", json={"workflow": "order", "key": key, "data": data})
            assert started.status_code == 201, started.text
        escrow = (
            await api.post("/sagas", json={"workflow": "escrow", "key": waiting, "data": ESCROW})
        ).json()
        hostile = (await api.get("/sagas", params={"key": HOSTILE_KEY})).json()["items"][0]
        await bench.finished("order", [completed, compensated, HOSTILE_KEY])
        await wait_for(api, escrow["id"], "awaiting_funds")  # the bank never answers: it waits there
        # The stuck order: with payment away it waits in charge; with inventory away too, a
        # cancel sends it into compensating_reserve, which has no deadline, and ReleaseStock is
        # never answered.
        [payment] = [p for p in bench.processes if p.name == "payment"]
        [inventory] = [p for p in bench.processes if p.name == "inventory"]
        payment.stop()
        order = (await api.post("/sagas", json={"workflow": "order", "key": stuck, "data": ORDER})).json()
        await wait_for(api, order["id"], "charge")
        inventory.stop()
        cancelled = await api.post(f"/sagas/{order['id']}/cancel", json={"reason": "customer called"})
        assert cancelled.json()["state"] == "compensating_reserve", cancelled.text
    # a reply for an order nobody placed: a dead letter (unknown_saga), markup in its body too
    await bench.publish("inventory.StockReserved", {"order_id": GONE, "reservation_id": "r-1"})
    [letter] = await bench.dead_letters(1)

    watched = Watched(await browser.new_page(viewport={"width": 1300, "height": 900}))
    page = watched.page
    await page.goto(f"{bench.api_url}/console/#/sagas")

    # The list: every saga (reads are opened), then filtered by status, then by workflow and key.
    rows = page.locator("#saga-table tbody tr")
    await expect(rows).to_have_count(5)
    await expect(page.locator("#who")).to_have_text("not logged in")
    await shot(page, "sagas")
    await page.select_option("#status", "compensated")
    await page.get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text(compensated)
    await expect(rows.first.locator(".badge")).to_have_text("compensated")
    assert "status=compensated" in page.url
    await page.get_by_role("button", name="Clear").click()
    await expect(rows).to_have_count(5)

    # Paging: two a page, older pages through the API's cursor.
    await page.goto(f"{bench.api_url}/console/#/sagas?limit=2")
    await expect(rows).to_have_count(2)
    newest = await rows.first.locator("th").inner_text()
    await page.get_by_role("link", name="Next page (older)").click()
    await expect(rows.first.locator("th")).not_to_have_text(newest)
    await expect(rows).to_have_count(2)
    second = await rows.first.locator("th").inner_text()
    await page.get_by_role("link", name="Next page (older)").click()
    await expect(rows.first.locator("th")).not_to_have_text(second)
    await expect(rows).to_have_count(1)
    await expect(page.get_by_role("link", name="Next page (older)")).to_have_count(0)
    await page.get_by_role("link", name="First page").click()
    await expect(rows.first.locator("th")).to_have_text(newest)
    await page.get_by_role("button", name="Clear").click()
    await expect(rows).to_have_count(5)

    # The stuck order: found by the filter, why it is stuck on its page, acted on.
    await page.check("#stuck")
    await page.get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text(stuck)
    await expect(rows.first.locator(".badge.stuck")).to_have_text("stuck")
    await page.get_by_role("link", name=stuck).click()
    await expect(page.locator("#saga-state")).to_have_text("compensating_reserve")
    await expect(page.locator("#saga-why")).to_contain_text(
        "Nothing will move this saga on its own: it has no pending deadline or retry, and it waits for"
        " inventory.StockReleased, the reply to inventory.ReleaseStock from service inventory."
    )
    await expect(page.locator("#timeline > li").last).to_contain_text("Operator's reason: customer called")
    await shot(page, "stuck")
    # An action without a token: the service asks for one, the console shows the login prompt.
    await page.get_by_role("button", name="Retry").click()
    await expect(page.locator("#confirm")).to_be_visible()
    await expect(page.locator("#confirm-what")).to_have_text(
        "Retry sends the command of step compensating_reserve again now: inventory.ReleaseStock to"
        " service inventory, with the same message ids unless you ask for new ones."
        f" This acts on saga {stuck} (order, {order['id']})."
    )
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#login-form")).to_be_visible()
    await expect(page.locator("#login-error")).to_contain_text("valid token")
    await page.fill("#login-token", bench.api_token)
    await page.fill("#login-actor", "ops-carol")
    await page.locator("#login-form button[type=submit]").click()
    await expect(page.locator("#saga-state")).to_have_text("compensating_reserve")
    assert bench.api_token not in page.url
    await page.get_by_role("button", name="Retry").click()
    await page.fill("#action-reason", "inventory is back")
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#flash")).to_contain_text("Retry done")
    retried = page.locator("#timeline > li").last
    await expect(retried).to_contain_text("Operator: retry")
    await expect(retried).to_contain_text("Sent inventory.ReleaseStock")
    # inventory back: it takes the ReleaseStock waiting in its queue, and the page shows the end
    await bench.start_participant("inventory")
    await expect(page.locator("#saga-state")).to_have_text("compensated", timeout=20_000)
    await expect(page.locator("#saga-status")).to_have_text("compensated")
    await page.goto(f"{bench.api_url}/console/#/sagas")
    await expect(rows).to_have_count(5)

    await page.select_option("#workflow", "escrow")  # submits on change
    await expect(rows).to_have_count(1)
    await page.fill("#key", waiting)
    await page.get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(1)
    await page.get_by_role("link", name=waiting).click()

    # The saga: where it stands, why (what it waits for), its timeline and its place in the diagram.
    await expect(page.locator("#saga-state")).to_have_text("awaiting_funds")
    await expect(page.locator("#saga-status")).to_have_text("running")
    await expect(page.get_by_text("bank.FundsDeclined, bank.FundsReceived")).to_be_visible()
    # the buyer's and seller's signatures come in either order (one may be parked a while)
    entries = page.locator("#timeline > li")
    await expect(entries.first).to_contain_text("Started by operator (escrow.EscrowOpened)")
    await expect(entries.first).to_contain_text("by checkout")
    collect = entries.filter(has_text="Sent bank.CollectFunds")
    await expect(collect).to_have_count(1)
    await expect(collect).to_contain_text("Deadline set for awaiting_funds")
    before = await entries.count()
    await expect(page.locator("#saga-timers")).to_contain_text("awaiting_funds")
    current = page.locator("#saga-diagram svg g.node.current")
    await expect(current).to_have_count(1)
    assert await current.get_attribute("data-state") == "awaiting_funds"
    visited = await page.locator("#saga-diagram g.node.visited").evaluate_all(
        "ns => ns.map(n => n.dataset.state)"
    )
    assert visited[0] == "awaiting_buyer" and "awaiting_funds" in visited
    assert await page.locator("#saga-diagram g.edge.taken").count() == len(visited) - 1
    await shot(page, "saga")

    await page.get_by_role("button", name="Fire deadline").click()
    await expect(page.locator("#confirm-what")).to_contain_text(
        "Fire deadline fires the deadline of state awaiting_funds now"
    )
    await expect(page.locator("#confirm-what")).to_contain_text(f"saga {waiting} (escrow, {escrow['id']})")
    await page.locator("#confirm-cancel").click()  # changed one's mind: nothing happens
    await expect(page.locator("#confirm")).to_be_hidden()
    await expect(page.locator("#saga-state")).to_have_text("awaiting_funds")

    # Logged in: the confirmation, then the saga moves, seen on the page without a reload.
    await page.get_by_role("button", name="Fire deadline").click()
    await page.fill("#action-reason", "the bank lost it")
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#confirm")).to_be_hidden()
    await expect(page.locator("#saga-state")).to_have_text("expired_undo_1")
    await expect(page.locator("#saga-status")).to_have_text("compensating")
    await expect(page.locator("#flash")).to_contain_text("Fire deadline done")
    await expect(entries).to_have_count(before + 1)
    fired = entries.last
    await expect(fired).to_contain_text("Operator: fire-deadline")
    await expect(fired).to_contain_text("Operator's reason: the bank lost it")
    await expect(fired).to_contain_text("awaiting_funds → expired_undo_1")
    assert await current.get_attribute("data-state") == "expired_undo_1"

    # A refusal is the API's own words, in the dialog, which stays open.
    await page.get_by_role("button", name="Cancel saga").click()
    await page.get_by_role("button", name="Confirm").click()
    refusal = page.locator("#confirm-error")
    await expect(refusal).to_have_text("Refused (409): saga is already compensating (in expired_undo_1)")
    await expect(page.locator("#confirm")).to_be_visible()
    await page.locator("#confirm-cancel").click()
    await expect(page.locator("#confirm")).to_be_hidden()

    # Its compensation's deadline too: failed, its page says so, and resume takes it up again.
    await page.get_by_role("button", name="Fire deadline").click()
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#saga-status")).to_have_text("failed")
    await expect(page.locator("#saga-state")).to_have_text("expired_failed")
    await expect(page.locator("#saga-why")).to_contain_text("Failed in expired_failed")
    await page.get_by_role("button", name="Resume").click()
    await expect(page.locator("#confirm-what")).to_contain_text("(default: where it failed, expired_undo_1)")
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#saga-state")).to_have_text("expired_undo_1")
    await expect(page.locator("#saga-status")).to_have_text("compensating")
    await expect(entries.last).to_contain_text("Operator: resume")

    # The workflow's page: its diagram with the sagas per state now.
    await page.goto(f"{bench.api_url}/console/#/workflows/order")
    await expect(page.locator('#workflow-diagram g.node[data-state="completed"]')).to_contain_text("2 sagas")
    await expect(page.locator('#workflow-diagram g.node[data-state="compensated"]')).to_contain_text(
        "2 sagas"
    )
    async with bench.api() as api:
        activity = (await api.get("/workflows/order")).json()["activity"]
    assert activity["finished"]["completed"] == 2
    counts = page.locator("#workflow-counts")  # the API's activity, as it says
    await expect(counts).to_contain_text(f"{activity['started']}started, last hour")
    await expect(counts).to_contain_text("2completed, last hour")
    await expect(counts).to_contain_text(f"{activity['stuck']}stuck now")
    await shot(page, "workflow")

    # Dead letters: the list with reasons, one opened, replayed through the confirmation; still
    # unknown, the replayed message is dead-lettered again, a new row.
    await page.goto(f"{bench.api_url}/console/#/dead-letters")
    letters = page.locator("main table tbody tr")
    await expect(letters).to_have_count(1)
    await expect(letters.first).to_contain_text("unknown_saga")
    await shot(page, "dead-letters")
    await page.get_by_role("link", name=str(letter["id"]), exact=True).click()
    await expect(page.locator("#dl-body")).to_contain_text(GONE)
    await expect(page.locator("#dl-replayed")).to_have_text("no")
    await page.get_by_role("button", name="Replay").click()
    await expect(page.locator("#confirm-what")).to_contain_text(
        f"Replay publishes this inventory.StockReserved (message id {letter['message_id']}) again"
    )
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#dl-replayed")).not_to_have_text("no")
    await page.goto(f"{bench.api_url}/console/#/dead-letters")
    await expect(letters).to_have_count(2)

    # Markup and script in a key and a payload are text: no element made, nothing run.
    await page.goto(f"{bench.api_url}/console/#/sagas/{hostile['id']}")
    await expect(page.locator("#saga-key")).to_have_text(HOSTILE_KEY)
    await expect(page.locator("#saga-data")).to_contain_text(HOSTILE_CUSTOMER)
    await expect(page.locator("#timeline > li")).to_have_count(4)
    await page.goto(f"{bench.api_url}/console/#/sagas")
    await expect(page.get_by_role("link", name=HOSTILE_KEY)).to_be_visible()
    flags = await page.evaluate("[window.__pwned_key, window.__pwned_data, window.__pwned_letter]")
    assert flags == [None, None, None]
    assert await page.locator("img, svg[onload], main script").count() == 0
    assert await page.evaluate("document.scripts.length") == 1  # the console's own
    assert watched.problems() == []
    assert not [m for m in watched.console if "Content Security Policy" in m]


async def test_with_protected_reads_no_token_or_a_wrong_one_shows_the_login_and_no_data(
    bench: Bench, browser: Browser
) -> None:
    reader, operator = f"reader-{uuid.uuid4().hex}", f"operator-{uuid.uuid4().hex}"
    tokens = f"rita:read:{reader} otto:operate:{operator}"
    await bench.start_orchestrator(env={"ORCHESTRATOR_API_TOKENS": tokens})
    key = keys()
    async with bench.api() as api:
        started = await api.post("/sagas", json={"workflow": "order", "key": key, "data": ORDER})
        assert started.status_code == 201, started.text
    saga = started.json()
    watched = Watched(await browser.new_page())
    page = watched.page

    for where in (f"#/sagas/{saga['id']}", "#/workflows/order", "#/dead-letters", "#/sagas"):
        await page.goto(f"{bench.api_url}/console/{where}")
        await expect(page.locator("#login-form")).to_be_visible()
        await expect(page.locator("#login-token")).to_have_attribute("type", "password")
        assert key not in await page.content()
        assert await page.locator("main table, main svg").count() == 0

    await page.fill("#login-token", "not-the-token")
    await page.locator("#login-form button[type=submit]").click()
    await expect(page.locator("#login-error")).to_have_text("The token was refused.")
    await expect(page.locator("#login-form")).to_be_visible()
    assert key not in await page.content()
    assert await page.evaluate("sessionStorage.length") == 0  # a refused token is not kept

    # A token that may only read: the data, and no action to take.
    await page.fill("#login-token", reader)
    await page.locator("#login-form button[type=submit]").click()
    await expect(page.locator("#who")).to_have_text("rita (read)")
    await page.get_by_role("link", name=key).click()
    await expect(page.locator("#saga-state")).to_have_text("reserve")
    await expect(page.locator("#actions")).to_have_text(
        "Your token may read only: operator actions need the operate role."
    )
    assert await page.locator("#actions button").count() == 0
    assert reader not in page.url

    # Logged out: nothing kept, nothing shown.
    await page.get_by_role("button", name="Log out").click()
    await expect(page.locator("#login-form")).to_be_visible()
    assert key not in await page.content()
    assert await page.evaluate("sessionStorage.length") == 0
    await page.reload()
    await expect(page.locator("#login-form")).to_be_visible()

    # An operator: the action, journaled as the token's owner.
    await page.fill("#login-token", operator)
    await page.locator("#login-form button[type=submit]").click()
    await expect(page.locator("#who")).to_have_text("otto (operate)")
    await expect(page.locator("#saga-state")).to_have_text("reserve")
    await page.get_by_role("button", name="Cancel saga").click()
    await expect(page.locator("#confirm-what")).to_contain_text("moving from reserve to compensated")
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#saga-state")).to_have_text("compensated")
    await expect(page.locator("#timeline > li").last).to_contain_text("Operator: cancel")
    await expect(page.locator("#timeline > li").last).to_contain_text("by otto")
    assert watched.problems() == []


async def test_a_parent_and_its_child_saga_link_to_each_other(bench: Bench, browser: Browser) -> None:
    """Issue 28, item 2: the console shows the link both ways (``parent``, ``children``)."""
    await bench.serve("orchestrator.examples.shop", api_open_reads=True)
    await bench.work("inventory", "payment", "shipping", "billing")
    key = keys()
    async with bench.api(actor="checkout") as api:
        started = await api.post("/sagas", json={"workflow": "shop_order", "key": key, "data": ORDER})
        assert started.status_code == 201, started.text
    parent = started.json()["id"]
    child = (await bench.finished("fulfilment", [key]))[key]
    await bench.finished("shop_order", [key])

    watched = Watched(await browser.new_page(viewport={"width": 1300, "height": 900}))
    page = watched.page
    await page.goto(f"{bench.api_url}/console/#/sagas/{parent}")
    await expect(page.locator("#saga-status")).to_have_text("completed")
    await expect(page.locator("#saga-children")).to_contain_text("fulfilment, started by step fulfil")
    await page.locator("#saga-children a").click()
    await expect(page.locator("#saga-state")).to_have_text("completed")
    assert page.url.endswith(f"#/sagas/{child.id}")
    await expect(page.locator("#saga-parent")).to_have_text(parent)
    assert watched.problems() == []
