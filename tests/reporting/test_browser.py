"""The report opened in a real headless Chromium: no console error, sorting works, a screenshot.

Chromium comes from Debian's packages (``apt-get install -y chromium``); without it the test
fails saying so, it never skips.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.browser import Browser
from support.fleet import CITIES, Fleet

pytestmark = pytest.mark.slow

FIRST_COLUMN = (
    "Array.from(document.querySelectorAll('#fleet tbody tr')).map(r => r.cells[{col}].dataset.sort)"
)


def test_the_fleet_page_loads_sorts_and_is_screenshotted(fleet: Fleet, tmp_path: Path) -> None:
    assert fleet.report is not None
    with Browser() as browser:
        browser.open(fleet.report.path.as_uri())
        assert browser.errors == [], browser.errors
        assert browser.evaluate("document.title") == "matchmaking fleet report"
        cities = browser.evaluate(FIRST_COLUMN.format(col=1))
        assert sorted(cities) == sorted(CITIES)
        # the cities that need a look come first
        looks = [float(v) for v in browser.evaluate(FIRST_COLUMN.format(col=0))]
        assert looks == sorted(looks, reverse=True)
        browser.evaluate("document.querySelectorAll('#fleet th')[1].click()")
        assert browser.evaluate(FIRST_COLUMN.format(col=1)) == sorted(CITIES)
        browser.evaluate("document.querySelectorAll('#fleet th')[1].click()")
        assert browser.evaluate(FIRST_COLUMN.format(col=1)) == sorted(CITIES, reverse=True)
        assert browser.errors == [], browser.errors
        shot = browser.screenshot(tmp_path / "fleet.png")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    print(f"screenshot of the fleet page: {shot}")


def test_the_browser_check_sees_a_script_error(tmp_path: Path) -> None:
    """The check itself: a page that throws is reported (so a clean run means something)."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    with Browser() as browser:
        browser.open(page.as_uri())
        assert any("undefinedFunction" in e for e in browser.errors), browser.errors
