"""report.html in a real browser: headless Chromium shows the long frame's rows, sorts, filters and draws.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package (the `[test]`
extra); elsewhere the test skips and says why. CI sets KDBENCH_REQUIRE_BROWSER=1, which turns
that skip into a failure, so the test runs there.
"""

import os

import pytest

from _report_fake import build_grid
from kdbench import results
from kdbench.cli import main
from kdbench.report import browser, build
from kdbench.report.html import long_frame
from kdbench.report.prepare import text

# A real browser: the slow tier (CI requires it there, KDBENCH_REQUIRE_BROWSER=1).
pytestmark = pytest.mark.slow

WHY_NOT = browser.browser_unavailable()


@pytest.fixture(scope="module")
def driver():
    if WHY_NOT:
        if os.environ.get("KDBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"KDBENCH_REQUIRE_BROWSER=1 but {WHY_NOT}")
        pytest.skip(WHY_NOT)
    with browser.headless_chromium(1360, 900) as d:
        yield d


@pytest.fixture
def page(tmp_path, driver):
    root = tmp_path / "results"
    build_grid(root)
    assert main(["report", "--results-dir", str(root), "--out", str(tmp_path / "out"), "--no-plots", "--html"]) == 0
    rep = build.build_report(results.load(root), results.load_metrics(root), grid="g")
    driver.get((tmp_path / "out" / "report.html").resolve().as_uri())
    return rep


ROWS_JS = """return Array.from(document.querySelectorAll('#results-table tbody tr')).filter(r => !r.hidden)
    .map(r => ({cells: Array.from(r.cells).map(c => c.innerText.trim()), title: r.cells[5].title}));"""


def visible_rows(driver):
    return driver.execute_script(ROWS_JS)


def expected_cells(r):
    top1 = f"{r['mean']:.2f}" + (f" ± {r['std']:.2f}" if r["n"] >= 2 else "") + (f" {r['mark']}" if r["mark"] else "")

    def signed(x):
        return "—" if x != x else f"{x:+.2f}"

    p = r["p_adjusted"]
    p_text = "—" if p != p else "0" if p == 0 else f"{p:.2g}" if p < 0.001 else f"{p:.3f}"
    return [r["pair"], r["teacher"], r["student"], r["variant"], f"{r['teacher_top1']:.2f}", top1, str(int(r["n"])),
            signed(r["gain"]), signed(r["gain_low"]), signed(r["gain_high"]), p_text]


def click_header(driver, key):
    driver.find_element("css selector", f'#results-table th[data-key="{key}"]').click()


def choose(driver, key, value):
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("css selector", f'select[data-filter="{key}"]')).select_by_value(value)


def test_rows_and_numbers_are_the_long_frame(page, driver):
    long = long_frame(page.view("main").frame)
    runs = page.view("runs").frame
    rows = visible_rows(driver)
    assert len(rows) == len(long) == 8
    for shown, (_, r) in zip(rows, long.iterrows()):
        assert shown["cells"] == expected_cells(r)
        seeds = runs[(runs["variant"] == r["variant"]) & (runs["pair"] == r["pair"])].sort_values("seed")
        assert shown["title"] == "\n".join(f"seed {s}: {v:.2f}" for s, v in zip(seeds["seed"], seeds["value"]))
    assert driver.find_element("css selector", ".filters .count").text == "8 rows"


def test_sorting_by_clicking_a_header(page, driver):
    long = long_frame(page.view("main").frame)
    click_header(driver, "mean")
    assert [float(r["cells"][5].split()[0]) for r in visible_rows(driver)] == sorted(long["mean"].round(2))
    header = driver.find_element("css selector", '#results-table th[data-key="mean"]')
    assert header.get_attribute("aria-sort") == "ascending"
    click_header(driver, "mean")
    assert [float(r["cells"][5].split()[0]) for r in visible_rows(driver)] == sorted(long["mean"].round(2), reverse=True)
    # Blank cells (the baseline has no gain) sort last in both directions.
    click_header(driver, "gain")
    gains = [r["cells"][7] for r in visible_rows(driver)]
    assert gains[-2:] == ["—", "—"] and [float(g) for g in gains[:-2]] == sorted(long["gain"].dropna().round(2))
    click_header(driver, "variant")
    assert [r["cells"][3] for r in visible_rows(driver)] == sorted(long["variant"], key=str.lower)


def test_filters_by_pair_method_and_teacher(page, driver):
    choose(driver, "pair", "tA→sA")
    rows = visible_rows(driver)
    assert {r["cells"][0] for r in rows} == {"tA→sA"} and len(rows) == 4
    assert driver.find_element("css selector", ".filters .count").text == "4 of 8 rows"
    choose(driver, "variant", "dkd")
    assert [r["cells"][:4] for r in visible_rows(driver)] == [["tA→sA", "tA", "sA", "dkd"]]
    driver.find_element("css selector", ".filters button.reset").click()
    choose(driver, "teacher", "tB")
    assert {r["cells"][1] for r in visible_rows(driver)} == {"tB"}


def test_curves_are_drawn_and_methods_can_be_hidden(page, driver, tmp_path):
    lines = "return document.querySelectorAll('#curve-0 polyline').length"
    assert driver.execute_script(lines) == 4  # vanilla, kd, dkd, noisy in tA→sA
    assert driver.execute_script("return document.querySelectorAll('#curve-1 polygon').length") == 4  # seed bands
    driver.find_elements("css selector", "#curves-legend button")[0].click()
    assert driver.execute_script(lines) == 3
    shot = tmp_path / "report.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    assert text(driver.title) == "kdbench report: g"
