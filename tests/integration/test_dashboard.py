"""The dashboard in a real browser (headless Chromium driven by Playwright) during a
replay: the charts fill, the numbers move, and a screenshot is saved."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from stream_app.replay import replay
from tests.integration.events import synthetic_events
from tests.integration.test_api import with_categories

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "dashboard-token"


def test_dashboard_shows_live_data(bootstrap, worker_factory, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (Debian package 'chromium'): browser test skipped")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

    worker = worker_factory(IMPORTANCE_API_TOKEN=TOKEN, IMPORTANCE_ROLLING_PUBLISH_S="1")
    worker.start()
    port = worker.settings.web_port
    events = with_categories(synthetic_events(4000, prefix="dash"))
    failures: list[BaseException] = []

    def feed() -> None:
        try:
            replay(events, bootstrap, topic=worker.settings.topic_events, rate=250, progress=False)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    errors: list[str] = []
    shot = tmp_path / "dashboard.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
            )
            page.goto(f"http://127.0.0.1:{port}/dashboard?token={TOKEN}")
            # charts with data and a top-items table with rows
            page.wait_for_function(
                """() => {
                    const pts = (id) => Number(document.getElementById(id).dataset.points);
                    return pts('chart-throughput') >= 3 && pts('chart-importance') > 0
                        && pts('chart-quality') >= 3 && pts('chart-lag') >= 3
                        && document.querySelectorAll('#top-items tbody td:not(.empty)').length > 0
                        && document.querySelectorAll('#top-categories td:not(.empty)').length > 0;
                }""",
                timeout=90_000,
            )
            first = page.text_content("#kpi-scored-total")
            refreshes = int(page.get_attribute("body", "data-refreshes") or 0)
            # the numbers move while the replay runs, and the page keeps refreshing
            page.wait_for_function(
                """([first, refreshes]) =>
                    document.getElementById('kpi-scored-total').textContent !== first
                    && Number(document.body.dataset.refreshes) > refreshes""",
                arg=[first, refreshes],
                timeout=30_000,
            )
            second = page.text_content("#kpi-scored-total")
            assert int(second.replace(",", "")) > int(first.replace(",", "") or 0)
            assert "live" in (page.text_content("#status") or "")
            assert page.locator("#chart-throughput canvas").count() == 1
            # an empty value would print a dash: the KPIs show numbers
            for kpi in ("kpi-events-in", "kpi-keep", "kpi-lag", "kpi-scored-total"):
                assert page.text_content(f"#{kpi}") not in ("", "–"), kpi
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    feeder.join(120)
    assert not failures, failures
    assert not errors, json.dumps(errors, indent=1)
    assert shot.stat().st_size > 10_000
