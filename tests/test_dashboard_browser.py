"""report/index.html in a real browser: headless Chromium opens the page from disk (file://, no
server, no network), runs its JavaScript, and hands back the DOM, its console and a screenshot
(left in the test's tmp dir). Skipped where Chromium is not installed (Debian: apt-get install
chromium; .ci/run installs it when it can)."""

import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from test_report import LADDER, make_job

from flowhn import report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium)")


def open_in_chromium(url: str, tmp_path, size=(1400, 2600)):
    """DOM after the page's scripts ran, the console lines, and the screenshot's path."""
    shot = tmp_path / "screenshot.png"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        # without these Chromium reaches for the network at start (and waits on it here)
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
        # virtual time: timers and animation frames run ahead until the page is idle (at most 10 s)
        "--virtual-time-budget=10000", f"--window-size={size[0]},{size[1]}", "--hide-scrollbars",
        f"--screenshot={shot}", "--dump-dom", url,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console, shot


def console_errors(console: list[str]) -> list[str]:
    return [line for line in console if "Uncaught" in line or "rror" in line]


# HTML elements without an end tag (Chromium writes SVG elements with theirs).
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Charts(HTMLParser):
    """From the DOM: per chart div (class "chart") how many plotly SVG roots and drawn traces it
    holds; the cells of the table's body rows in page order; the text of #js-errors; the body's
    attributes."""

    def __init__(self):
        super().__init__()
        self.charts: dict[str, dict[str, int]] = {}
        self.open: list[tuple[str, str | None, str | None]] = []  # (tag, chart it is in, id) per open element
        self.rows: list[list[str]] = []
        self.errors = ""
        self.titles: list[str] = []  # x-axis titles plotly drew
        self.body: dict[str, str | None] = {}

    def _inside(self, tag: str) -> bool:
        return any(t == tag for t, _, _ in self.open)

    def _in_table(self) -> bool:
        return any(i == "table1" for _, _, i in self.open) and self._inside("tbody")

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        chart = self.open[-1][1] if self.open else None
        if tag == "div" and "chart" in classes:
            chart = attrs["id"]
            self.charts[chart] = {"svg": 0, "traces": 0}
        if chart is not None and tag == "svg" and "main-svg" in classes:
            self.charts[chart]["svg"] += 1
        if chart is not None and tag == "g" and "trace" in classes:
            self.charts[chart]["traces"] += 1
        if tag == "body":
            self.body = attrs
        if tag == "tr" and self._in_table():
            self.rows.append([])
        if tag == "td" and self._in_table():
            self.rows[-1].append("")
        if tag not in VOID:
            x_title = any(re.fullmatch(r"x\d*title", c) for c in classes)  # plotly: xtitle, x2title, ...
            self.open.append((tag, chart, "xtitle" if x_title else attrs.get("id")))

    def handle_endtag(self, tag):
        if tag not in VOID and self.open:
            self.open.pop()

    def handle_data(self, data):
        if self.open and self.open[-1][0] == "text" and self.open[-1][2] == "xtitle":
            self.titles.append(data)
        if any(i == "js-errors" for _, _, i in self.open):
            self.errors += data
        elif self._in_table() and self._inside("td"):
            self.rows[-1][-1] += data


def parse(dom: str) -> Charts:
    parser = Charts()
    parser.feed(dom)
    return parser


@pytest.fixture
def report_page(tmp_path):
    """The report of a sweep with completed, failed and stopped jobs and a seqlen ladder."""
    sweep = tmp_path / "browser_sweep"
    curve = [{"step": s, "train/loss": 9.0 - 0.5 * s, "perf/tps": 1000.0 + 10 * s, "perf/step_time_ms": 50.0,
              "perf/mfu": 0.2} for s in range(1, 9)]  # fmt: skip
    curve += [{"step": 3, "val/loss": 6.0}, {"step": 8, "val/loss": 5.0}]
    for split, tps, loss in (("fac_split", 30000.0, 3.25), ("no_split", 25000.0, 3.0), ("ae_split", 20000.0, 3.5)):
        make_job(sweep, f"split={split}", {"split": split}, arch="flowhn", scale="135m", split=split, tps=tps,
                 mfu=0.2, val_loss=loss, eval_avg=0.37, steps=8, tokens=8 * 4096, metrics={"version_0": curve})
    make_job(sweep, "split=fa_split", {"split": "fa_split"}, status="failed", arch="flowhn", scale="135m",
             split="fa_split", error="torch.OutOfMemoryError: CUDA out of memory")
    make_job(sweep, "model=hymba", {"model": "hymba"}, status="stopped", arch="hymba", scale="135m",
             error="SIGTERMException: stopped by SIGTERM at step 2", metrics={"version_0": curve[:2]})
    (sweep / "seqlen.csv").write_text(LADDER)
    assert report.main([str(sweep)]) == 0
    return sweep / "report" / "index.html"


def test_every_chart_renders_without_console_errors_and_the_table_sorts(report_page, tmp_path):
    dom, console, shot = open_in_chromium(report_page.as_uri() + "#sort=TPS:desc&x=tokens", tmp_path)
    page = parse(dom)
    assert not console_errors(console), console
    assert page.errors.strip() == ""
    # the page's script finished: every figure drawn (data-rendered = how many)
    assert page.body.get("data-rendered") == "3", page.body
    assert set(page.charts) == {"curves", "tradeoff", "seqlen"}
    for name, found in page.charts.items():
        assert found["svg"] >= 1 and found["traces"] >= 1, (name, found)
    # 3 completed runs + the stopped one in TPS, MFU and training loss; the stopped one has no
    # validation yet; the ladder's 2 models
    assert page.charts["curves"]["traces"] == 4 + 4 + 4 + 3
    assert page.charts["seqlen"]["traces"] == 2
    # #sort=TPS:desc sorted the table in the browser: by TPS, blanks (failed, stopped) last
    jobs = [row[-1] for row in page.rows]
    assert jobs[:3] == ["split=fac_split", "split=no_split", "split=ae_split"]
    assert set(jobs[3:]) == {"split=fa_split", "model=hymba"}
    # #x=tokens switched every curve panel's x axis, as its button does (plotly draws the titles)
    assert page.titles.count("tokens trained") == 4 and "optimizer step" not in page.titles
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_a_page_that_throws_is_caught(tmp_path):
    """The check above can fail: an uncaught error shows in the console lines it reads."""
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><div id='x'></div><script>notAFunction();</script></body></html>")
    _dom, console, _shot = open_in_chromium(broken.as_uri(), tmp_path, size=(400, 300))
    assert any("notAFunction is not defined" in line for line in console_errors(console)), console
