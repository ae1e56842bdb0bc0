"""report.html without a browser: self-contained, escaped, one long table, small for a 294-run grid."""

import json
import re

import pytest

from _report_fake import CIFAR100_GRID_PAIRS, build_grid, realistic_grid, write_run
from kdbench import results
from kdbench.report import build
from kdbench.report import html as report_html


def page_of(root, **kwargs):
    rep = build.build_report(results.load(root), results.load_metrics(root), grid="g", **kwargs)
    return rep, report_html.html_page(rep.grid, rep.prepared, rep.views)


def test_page_is_self_contained(tmp_path):
    build_grid(tmp_path / "results")
    _, page = page_of(tmp_path / "results")
    assert page.startswith("<!DOCTYPE html>")
    # Nothing is fetched: no external script, style, font or image, and no URL at all.
    assert not re.search(r"<(script|img|link|iframe)[^>]*\s(src|href)=", page)
    unfetched = page.replace('"http://www.w3.org/2000/svg"', "")  # the SVG namespace is a name, not a fetch
    assert "http://" not in unfetched and "https://" not in unfetched and "@import" not in page and "url(" not in page
    assert page.count("<style>") == 1 and page.count("<script>") == 1
    assert '<script type="application/json" id="curves-data">' in page


def test_every_label_is_escaped(tmp_path):
    root = tmp_path / "results"
    nasty = 'x</script><script>alert("boom")</script>&amp;'
    for seed in range(2):
        write_run(root, "g", variant="kd", pair="t->s", seed=seed, final_top1=70.0 + seed)
        write_run(root, "g", variant=nasty, pair="t->s", seed=seed, final_top1=71.0 + seed,
                  protocol='"quoted" <i>protocol</i>')
    rep, page = page_of(root)
    assert nasty not in page and "<i>protocol</i>" not in page
    assert "x&lt;/script&gt;&lt;script&gt;alert(&quot;boom&quot;)&lt;/script&gt;&amp;amp;" in page
    assert page.count("<script") == 2  # the curves' JSON and the page's own script, nothing injected
    data = re.search(r'id="curves-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in data and json.loads(data)["variants"] == ["kd", nasty]


def test_long_table_has_one_row_per_pair_and_method(tmp_path):
    build_grid(tmp_path / "results")
    rep, page = page_of(tmp_path / "results")
    long = report_html.long_frame(rep.view("main").frame)
    assert list(zip(long["pair"], long["variant"])) == [
        ("tA→sA", "vanilla"), ("tA→sA", "kd"), ("tA→sA", "dkd"), ("tA→sA", "noisy"),
        ("tB→sB", "vanilla"), ("tB→sB", "kd"), ("tB→sB", "dkd"), ("tB→sB", "noisy")]
    assert list(long["teacher_top1"]) == [80.0] * 4 + [75.0] * 4
    body = page.split('id="results-table"', 1)[1].split("</table>", 1)[0]
    assert body.count("<tr data-pair=") == len(long)
    assert 'title="seed 0: 66.00\nseed 1: 67.00"' in body  # dkd in B: two seeds
    for key, label in report_html.FILTERS:
        assert f'<select data-filter="{key}">' in page


def test_page_draws_the_agreement_and_calibration_table(tmp_path):
    build_grid(tmp_path / "results")
    rep, page = page_of(tmp_path / "results")
    view = rep.view("agreement_calibration")
    assert report_html.grid_table(view.layout()) in page
    assert '<a href="#agreement-calibration">Agreement &amp; calibration</a>' in page
    section = page.split('<section id="agreement-calibration">', 1)[1].split("</section>", 1)[0]
    assert "<td class=\"r\">—</td>" in section  # vanilla in B recorded none: shown missing, not 0.00


@pytest.mark.slow
def test_a_294_run_grid_stays_small(tmp_path):
    root = tmp_path / "results"
    assert realistic_grid(root, grid="g", pairs=CIFAR100_GRID_PAIRS) == 294
    rep, page = page_of(root)
    size = len(page.encode("utf-8"))
    assert size < 1_500_000, f"report.html is {size / 1e6:.2f} MB for 294 runs"
    assert page.count("<tr data-pair=") == 14 * 7
    assert page.count('<figure class="chart">') == 14


@pytest.mark.parametrize("correction, header", [("holm", "p (Holm)"), ("none", "p")])
def test_p_column_names_the_correction(tmp_path, correction, header):
    build_grid(tmp_path / "results")
    _, page = page_of(tmp_path / "results", correction=correction)
    assert f'data-key="p_adjusted" data-type="num" class="r">{header}</th>' in page
