"""llmctx ui in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium).

One server and one browser serve the whole module. Every page visited is saved as a
screenshot under ``tests/artifacts/ui/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import llmctx
from llmctx.stores import SQLiteStore
from llmctx.testing import FakeModel
from llmctx.ui import create_app
from ui_support import ARTIFACTS, Seeded, chromium, need_chromium, screenshot, seed, serve

pytestmark = pytest.mark.filterwarnings("ignore::llmctx.UnknownPriceWarning")

WAIT = 15  # seconds any one browser condition may take


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Seeded, Path]]:
    """A seeded SQLite store served by a real uvicorn server: (base URL, seed, db path)."""
    need_chromium()
    db = tmp_path_factory.mktemp("ui") / "browser.db"
    store = SQLiteStore(db)
    seeded = seed(store)
    store.close()
    with serve(create_app(str(db))) as base:
        yield base, seeded, db


@pytest.fixture(scope="module")
def browser(site: Any) -> Iterator[Any]:
    """One headless Chromium for the module."""
    with chromium() as driver:
        yield driver


def _wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT).until(condition, message=what)


def _css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def _all(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def _csp_errors(driver: Any) -> list[str]:
    return [
        e["message"]
        for e in driver.get_log("browser")
        if "Content Security Policy" in e["message"] or "Refused to" in e["message"]
    ]


def test_list_search_and_open_a_session(site: Any, browser: Any) -> None:
    """The list renders its rows and charts; a search narrows it; a row opens its session."""
    base, seeded, _ = site
    browser.get(base + "/")
    rows = _all(browser, "table.sessions tbody tr")
    assert len(rows) == 6
    _wait(
        browser,
        lambda d: d.execute_script(
            "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"
        ),
        "the list's chart images load",
    )
    assert len(_all(browser, "img[data-chart]")) == 4
    screenshot(browser, "01-list")
    box = _css(browser, "#q")
    box.send_keys("research")
    box.submit()
    _wait(browser, lambda d: "q=research" in d.current_url, "the search runs")
    names = [a.text for a in _all(browser, "table.sessions td.name a")]
    assert names == ["research agent"]
    screenshot(browser, "02-list-search")
    _css(browser, "table.sessions td.name a").click()
    _wait(browser, lambda d: f"/s/{seeded.rich_id}" in d.current_url, "the session opens")
    assert "research agent" in _css(browser, "h1").text
    assert _csp_errors(browser) == []


def test_session_tree_expands_and_charts_render(site: Any, browser: Any) -> None:
    """A collapsed child scope opens on a click and shows its calls; the waterfall and the
    charts are drawn (their bars have a size)."""
    base, seeded, _ = site
    browser.get(f"{base}/s/{seeded.rich_id}")
    child = _css(browser, f'details[data-key="node-{seeded.child_id}"]')
    assert child.get_attribute("open") is None
    first_call = child.find_element("css selector", "ul.ncalls li")
    assert not first_call.is_displayed()
    child.find_element("css selector", "summary").click()
    _wait(browser, lambda d: first_call.is_displayed(), "the child scope expands")
    assert "claude-sonnet-4-5" in first_call.text
    widths = browser.execute_script(
        "return [...document.querySelectorAll('#timeline svg rect')]"
        ".map(r => r.getBoundingClientRect().width)"
    )
    assert len(widths) == 8 and all(w > 0 for w in widths)
    charts = browser.execute_script(
        "return [...document.querySelectorAll('section.charts.small svg')]"
        ".map(s => s.querySelectorAll('rect').length)"
    )
    assert len(charts) == 4 and all(n > 0 for n in charts)
    screenshot(browser, "03-session-tree-expanded")
    assert _csp_errors(browser) == []


def test_open_a_call_toggle_raw_json_and_copy(site: Any, browser: Any) -> None:
    """A call link opens the conversation; Raw JSON opens on a click; Copy as JSON copies."""
    base, seeded, _ = site
    browser.get(f"{base}/s/{seeded.rich_id}")
    _css(browser, "#calls-table tbody a").click()
    _wait(browser, lambda d: f"/c/{seeded.ok_call}" in d.current_url, "the call opens")
    roles = [e.text.lower() for e in _all(browser, ".conversation .role")]
    assert roles[:2] == ["system", "user"] and roles[-1] == "response"
    assert _css(browser, ".placeholder").text == "[image]"
    raw = _css(browser, "#raw-toggle pre")
    assert not raw.is_displayed()
    _css(browser, "#raw-toggle summary").click()
    _wait(browser, lambda d: raw.is_displayed(), "the raw JSON opens")
    assert '"session_id": "rich0000aaaa1111"' in raw.text
    _css(browser, "button.copy").click()
    _wait(browser, lambda d: _css(d, ".copied").text == "copied", "the JSON is copied")
    screenshot(browser, "04-call")
    assert _csp_errors(browser) == []


def test_a_live_session_gains_a_call_without_a_reload(site: Any, browser: Any) -> None:
    """While a session runs, its open page shows each new call without reloading, and the
    list shows the new session."""
    base, _, db = site
    store = SQLiteStore(db)
    model = FakeModel(reply="still here")
    try:
        with llmctx.session("live-run", store=store) as s:
            model.complete("first question", max_tokens=4)
            browser.get(f"{base}/s/{s.id}")
            assert _css(browser, "#call-count").text == "1"
            browser.execute_script("window.__samePage = 'yes'")
            done = threading.Event()

            def call_again() -> None:
                model.complete("second question", max_tokens=4)
                done.set()

            # The session's context goes with the thread (llmctx.wrap), as in a program.
            threading.Thread(target=llmctx.wrap(call_again)).start()
            assert done.wait(WAIT)
            _wait(browser, lambda d: _css(d, "#call-count").text == "2", "the new call appears")
            assert browser.execute_script("return window.__samePage") == "yes"
            assert len(_all(browser, "#calls-table tbody tr")) == 2
            screenshot(browser, "05-session-live")
            browser.get(base + "/")
            assert "live-run" in [a.text for a in _all(browser, "table.sessions td.name a")]
    finally:
        store.close()
    assert _csp_errors(browser) == []


def test_recorded_markup_is_inert(site: Any, browser: Any) -> None:
    """A recorded <script>, onerror handler and javascript: link stay text: nothing runs, no
    element is made from them, and no CSP violation was even attempted."""
    base, seeded, _ = site
    for url, shot in (
        ("/", "06-list-xss"),
        (f"/s/{seeded.xss_session}", "07-session-xss"),
        (f"/c/{seeded.xss_call}", "08-call-xss"),
    ):
        browser.get(base + url)
        assert browser.execute_script("return typeof window.__pwned") == "undefined"
        assert browser.title != "pwned"
        assert _all(browser, "#bold-name") == [] and _all(browser, "#evil-link") == []
        assert browser.execute_script(
            "return [...document.querySelectorAll('a')].every(a => !(a.getAttribute('href') || '').trim().toLowerCase().startsWith('javascript:'))"
        )
        screenshot(browser, shot)
    assert "<script>window.__pwned = 1" in _css(browser, "#reply").text
    assert _csp_errors(browser) == []


def test_exported_file_renders_offline(site: Any, browser: Any, tmp_path: Path) -> None:
    """The HTML export opens from disk styled (its inline CSS allowed by hash) with the
    in-file links working and nothing loaded from anywhere."""
    from llmctx._cli.sessions import sessions_app

    _, seeded, db = site
    out = tmp_path / "export.html"
    result = CliRunner().invoke(
        sessions_app,
        ["export", "--format", "html", "--db", str(db), seeded.rich_id, "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    browser.get(out.as_uri())
    background = browser.execute_script(
        "return getComputedStyle(document.querySelector('header.top')).backgroundColor"
    )
    assert background == "rgb(31, 41, 51)"
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded == []
    _css(browser, f'#calls-table a[href="#call-{seeded.error_call}"]').click()
    _wait(browser, lambda d: d.current_url.endswith(f"#call-{seeded.error_call}"), "link followed")
    top = browser.execute_script(
        f"return document.getElementById('call-{seeded.error_call}').getBoundingClientRect().top"
    )
    assert 0 <= top < 100  # scrolled to the call's section
    assert "APIStatusError: 529 overloaded" in _css(browser, f"#call-{seeded.error_call}").text
    screenshot(browser, "09-export")
    assert (ARTIFACTS / "09-export.png").exists()
