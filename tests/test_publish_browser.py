"""The published site in a real headless browser (Debian's chromium): every table, image and link loads.

Each page is loaded from disk through a probe copy beside it (same folder, so relative links resolve) whose
first script records load errors and script errors; after the page's ``load`` event it checks every image
(decoded, non-zero width), fetches every link (``--allow-file-access-from-files``), clicks every header of
every sortable table and writes what it saw into the DOM, which ``--dump-dom`` prints. Console messages
come from ``--enable-logging=stderr``. Linked PNGs are added as hidden images at ``DOMContentLoaded``, so
they must decode too. Skipped, with the reason, only when no chromium binary is installed.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from robustbench_norm.results.publish import publish

BROWSER = next((path for name in ("chromium", "chromium-browser", "google-chrome")
                if (path := shutil.which(name))), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no headless browser: install Debian's chromium (apt-get install -y chromium; .ci/run "
                            "does) to render the published pages")

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=10000")
PROBE = """window.__problems=[];
window.addEventListener('error',function(e){var t=e.target;window.__problems.push(t&&t!==window&&(t.src||t.href)?
'failed to load '+(t.src||t.href):'script error: '+e.message);},true);
document.addEventListener('DOMContentLoaded',function(){Array.prototype.forEach.call(
document.querySelectorAll('a[href$=".png"]'),function(a){var img=new Image();img.src=a.href;img.hidden=true;
img.className='probe-linked';document.body.appendChild(img);});});
window.addEventListener('load',function(){var report={problems:window.__problems,tables:
document.querySelectorAll('table').length,images:document.querySelectorAll('img:not(.probe-linked)').length,
linkedImages:document.querySelectorAll('img.probe-linked').length,ready:/sortable-ready/.test(
document.documentElement.className),links:[],sorted:[]};
Array.prototype.forEach.call(document.images,function(img){if(!img.complete||img.naturalWidth===0){
report.problems.push('broken image '+img.getAttribute('src'));}});
Array.prototype.forEach.call(document.querySelectorAll('a[href]'),function(a){var ok=false;try{
var x=new XMLHttpRequest();x.open('GET',a.href,false);x.send();ok=(x.status===0||x.status===200)&&
x.responseText.length>0;}catch(err){ok=false;}report.links.push([a.getAttribute('href'),ok]);});
Array.prototype.forEach.call(document.querySelectorAll('table.sortable'),function(t){
Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th,c){th.click();report.sorted.push([th.textContent,
th.getAttribute('aria-sort'),Array.prototype.map.call(t.tBodies[0].rows,function(r){
var v=r.cells[c].getAttribute('data-sort');return v===null?r.cells[c].textContent:v;})]);});});
var out=document.createElement('pre');out.id='probe';out.textContent=JSON.stringify(report);
document.body.appendChild(out);});"""
REPORT = re.compile(r'<pre id="probe">(.*?)</pre>', re.S)
NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


def render(page: Path) -> tuple[dict, str]:
    """The probe's report and the browser's console lines for one page."""
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text().replace("<head>", f"<head><script>{PROBE}</script>", 1))
    try:
        done = subprocess.run([BROWSER, *FLAGS, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                              timeout=120, check=False)
    finally:
        probe.unlink()
    found = REPORT.search(done.stdout)
    assert found, f"{page.name}: the browser printed no probe report (rc {done.returncode}): {done.stderr[-2000:]}"
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    return json.loads(html.unescape(found.group(1))), "\n".join(console)


def sorted_as_the_script_sorts(values: list[str]) -> bool:
    """Numbers (a leading number, as parseFloat reads it) before texts (lowercase), missing values last."""
    keys = []
    for value in values:
        number = NUMBER.match(value)
        keys.append(None if value == "nan" or not value.strip() else
                    (0, float(number.group(1)), "") if number else (1, 0.0, value.lower()))
    present = [k for k in keys if k is not None]
    return keys[:len(present)] == present and present == sorted(present)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from tests.conftest import write_small_results

    root = tmp_path_factory.mktemp("site") / "results"
    write_small_results(root)
    return root, publish(root)


def test_every_page_loads_every_table_image_and_link(site):
    root, written = site
    pages = [path for path in written if path.suffix == ".html"]
    assert {p.name for p in pages} >= {"index.html", "noise.html", "batch_size.html", "domain_shift.html",
                                       "blend.html", "day_night.html", "noise_confusion.html", "blend_confusion.html"}
    for page in pages:
        report, console = render(page)
        source = page.read_text()
        assert report["problems"] == [], f"{page.name}: {report['problems']}"
        assert console == "", f"{page.name} logged to the console:\n{console}"
        assert report["ready"], f"{page.name}: the sort script did not run"
        assert report["tables"] == source.count("<table"), page.name
        assert report["images"] == source.count("<img"), page.name
        assert report["links"] and all(ok for _, ok in report["links"]), \
            f"{page.name}: links that do not load: {[href for href, ok in report['links'] if not ok]}"
        assert report["linkedImages"] == len([h for h, _ in report["links"] if h.endswith(".png")])
        for header, direction, values in report["sorted"]:
            assert direction == "ascending", (page.name, header)
            assert sorted_as_the_script_sorts(values), f"{page.name}: column {header!r} not sorted: {values}"
    index_report, _ = render(root / "index.html")
    hrefs = {href for href, _ in index_report["links"]}
    assert {"quick/tables/noise.html", "quick/tables/noise_agn.png", "quick/tables/noise_confusion.html",
            "quick/tables/day_night_translation_contextnorm.png"} <= hrefs


def test_headline_table_sorts_numerically_and_by_name(site):
    root, _ = site
    report, _ = render(root / "quick" / "tables" / "noise.html")
    columns = {}
    for header, _, values in report["sorted"]:
        columns.setdefault(header, values)  # the headline table comes first
    corrupted = [float(v) for v in columns["mean corrupted acc. (%)"]]
    assert corrupted == sorted(corrupted) and len(corrupted) == 3
    assert columns["norm"][:2] == ["batchnorm", "batchnorm (ref)"] and columns["norm"][-1] == "groupnorm"


def test_screenshot_of_a_scenario_page(site, tmp_path):
    root, _ = site
    shot = tmp_path / "noise.png"
    subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1400,1800", f"--screenshot={shot}", (root / "quick" / "tables" / "noise.html")
                    .as_uri()], capture_output=True, timeout=120, check=False)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and int.from_bytes(data[16:20], "big") == 1400
    assert len(data) > 50_000  # text, tables and the plot, not a blank page


def test_the_probe_catches_a_broken_image_a_dead_link_and_a_script_error(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>x</title></head><body>'
                    '<img src="missing.png" alt="x"><a href="absent.html">gone</a><a href="broken.html">here</a>'
                    "<script>notDefined();</script></body></html>")
    report, console = render(page)
    assert "broken image missing.png" in report["problems"]
    assert any(problem.startswith("failed to load") and "missing.png" in problem for problem in report["problems"])
    assert any("notDefined" in problem for problem in report["problems"]) and "notDefined" in console
    assert report["links"] == [["absent.html", False], ["broken.html", True]]
    assert not report["ready"]  # no sort script on this page
