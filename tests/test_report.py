"""memleak report: every analysis in one run, as text, JSON and one self-contained HTML page.

On the report fixture's core (a multi-threaded C++ program: classes in three arenas, leaks
direct and indirect, a leaked mmapped chunk, threads that exited without join, a joined one):
offline and in gdb give the same JSON; the page renders in headless Chromium with no console
message, every chart drawn and every section present; with --baseline (growth.cpp's two
phases) the growth section is there.  GDB_MEMLEAK_UPDATE_SCREENSHOT=1 also refreshes
docs/report.png from the rendered page."""
import os
import re
import shutil
import signal
import stat
import subprocess
from html.parser import HTMLParser

import pytest

from conftest import ROOT, Running, build, load_json, run_cli, run_gdb

HEADINGS = ["What to look at", "Where the memory went", "The address space", "Top classes: live vs leaked",
            "Leaks by class and by size", "Thread stacks"]
GROWTH = "Growth since the baseline"
CHARTS = ["chart-treemap", "chart-address-space", "chart-classes", "chart-leaks"]
STR = "channelid=([0-9]+);"


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fixture_core(report_core):
    return report_core


@pytest.fixture(scope="module")
def offline_report(fixture_core):
    exe, core, truth, d = fixture_core
    html, js = str(d / "report.html"), str(d / "report.json")
    r = run_cli("--core", core, "--exe", exe, "report", "--html", html, "--json", js)
    assert r.returncode == 0, r.stderr
    assert "report written to %s" % html in r.stdout
    return html, js, truth


@pytest.fixture(scope="module")
def chromium():
    exe = shutil.which("chromium")
    if exe is None:
        if os.geteuid() != 0:
            pytest.skip("chromium is not installed and apt-get needs root (make install installs it)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
                           capture_output=True, text=True, env=env, timeout=600)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
            r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
                               capture_output=True, text=True, env=env, timeout=600)
        exe = shutil.which("chromium")
        if exe is None:
            pytest.skip("Debian's chromium package cannot be installed here: %s" % (r.stderr.strip()[-300:] or r.stdout))
    return exe


def _chromium(exe, tmp_path, url, *mode):
    """(stdout, console lines) of one headless Chromium run on URL."""
    profile = tmp_path / "chromium-profile"
    argv = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            "--user-data-dir=%s" % profile, "--no-first-run", *mode, url]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    # every console message (log, warning, error) and every uncaught exception of the page
    console = [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    return r, console


class _Dom(HTMLParser):
    """Headings, and per element id its classes and how many <svg class="main-svg"> it holds."""

    def __init__(self):
        super().__init__()
        self.stack, self.ids, self.h2, self._h2 = [], {}, [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if a.get("id"):
            self.ids[a["id"]] = {"tag": tag, "class": cls, "main_svg": 0, "slices": 0}
        if tag == "svg" and "main-svg" in cls:
            for _t, i in self.stack:
                if i:
                    self.ids[i]["main_svg"] += 1
        if tag == "g" and "slice" in cls:
            for _t, i in self.stack:
                if i:
                    self.ids[i]["slices"] += 1
        if tag == "h2":
            self._h2 = ""
        if tag not in ("meta", "link", "br", "img", "input", "hr", "path", "rect", "line", "stop", "use",
                       "image", "circle", "ellipse", "polygon", "polyline"):
            self.stack.append((tag, a.get("id")))

    def handle_endtag(self, tag):
        for k in range(len(self.stack) - 1, -1, -1):
            if self.stack[k][0] == tag:
                del self.stack[k:]
                break
        if tag == "h2" and self._h2 is not None:
            self.h2.append(self._h2.strip())
            self._h2 = None

    def handle_data(self, data):
        if self._h2 is not None:
            self._h2 += data


def _dom(text):
    p = _Dom()
    p.feed(text)
    return p


def _no_external_fetch(page):
    assert not re.search(r"<script[^>]*\bsrc=", page, re.I), "a script is fetched"
    assert not re.search(r"<link[^>]*\bhref=", page, re.I), "a stylesheet is fetched"
    assert not re.search(r"<img[^>]*\bsrc=\"?https?:", page, re.I)
    assert "@import" not in page


# -- tests ------------------------------------------------------------------------------------------

def test_report_json_matches_truth_and_is_0600(offline_report):
    html, js, truth = offline_report
    for f in (html, js):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    doc = load_json(js)
    assert doc["schema"] == "gdb_memleak.report/1"
    leaked = {e["name"]: e["chunks"] for e in doc["leaks"]["by_class"]}
    for name, n in truth["leaked"].items():
        assert leaked.get(name) == n, (name, leaked)
    assert doc["leaks"]["leaked"]["indirect_chunks"] == truth["indirect"]
    classes = {c["name"]: c for c in doc["classes"]}
    for name, n in truth["live"].items():
        assert classes[name]["count"] == n and classes[name]["reachable"] == n and classes[name]["leaked"] == 0
    assert classes["app::Request"]["leaked"] == classes["app::Request"]["count"] == truth["leaked"]["app::Request"]
    reasons = [o["reason"] for o in doc["threads"]["orphan_stacks"]]
    assert reasons.count("exited-unjoined") == truth["exited_unjoined"] and reasons.count("cached") == truth["cached"]
    assert len(doc["threads"]["threads"]) == truth["threads"]
    assert len([a for a in doc["heap"]["arenas"] if a["kind"] == "thread"]) == 2
    # the treemap: kind -> arena -> class, every parent the sum of its children
    nodes = {n["id"]: n for n in doc["memory"]["nodes"]}
    kids = {}
    for n in nodes.values():
        kids.setdefault(n["parent"], []).append(n)
    for nid, ch in kids.items():
        if nid:
            assert nodes[nid]["bytes"] == sum(c["bytes"] for c in ch), nid
    arenas = [n for n in nodes.values() if n["parent"] == "all/arena-heap"]
    assert len(arenas) == 2
    for a in arenas:
        names = {c["label"]: c for c in kids[a["id"]]}
        assert names["app::Cache"]["chunks"] == truth["live"]["app::Cache"] // 2
        assert names["app::Request"]["leaked_chunks"] == (truth["leaked"]["app::Request"] - 10) // 2
    orphan = nodes["all/orphan"]
    assert orphan["bytes"] == sum(o["size"] for o in doc["threads"]["orphan_stacks"])
    # findings first, in words with numbers: leaks, then the unjoined threads
    texts = [f["text"] for f in doc["findings"]]
    assert texts[0].startswith("%d chunks leaked" % doc["leaks"]["leaked"]["chunks"])
    assert any("%d exited threads were never joined" % truth["exited_unjoined"] in t for t in texts)
    assert doc["growth"] is None


def test_report_same_json_offline_and_in_gdb(fixture_core, offline_report, tmp_path):
    exe, core, _truth, _d = fixture_core
    _html, js, _t = offline_report
    out = str(tmp_path / "gdb.json")
    r = run_gdb("memleak report --json %s" % out, exe=exe, core=core)
    assert r.returncode == 0, r.stderr
    assert "== What to look at ==" in r.stdout          # no --html: the text report
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    g, o = load_json(out), load_json(js)
    assert list(g) == list(o)
    for key in ("maps", "heap", "census", "leaks", "memory", "classes", "growth", "findings"):
        assert g[key] == o[key], key
    # gdb names frame 0 from libc's debug info; offline says module+offset
    strip = lambda d: [dict(t, function=None) for t in d["threads"]["threads"]]
    assert strip(g) == strip(o)
    assert {k: v for k, v in g["threads"].items() if k != "threads"} == \
           {k: v for k, v in o["threads"].items() if k != "threads"}
    assert g["target"]["build_id"] == o["target"]["build_id"]


def test_report_text_has_every_section(fixture_core):
    exe, core, truth, _d = fixture_core
    r = run_cli("--core", core, "--exe", exe, "report", "--top", "5")
    assert r.returncode == 0, r.stderr
    pos = [r.stdout.find("== %s ==" % h) for h in HEADINGS]
    assert all(p >= 0 for p in pos) and pos == sorted(pos), pos
    assert GROWTH not in r.stdout
    assert "app::Request" in r.stdout and "orphan stack" in r.stdout


def test_console_detector_sees_errors(chromium, tmp_path):
    """The check below is worth something: a page that logs an error or throws is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('logged');\nnull.f();</script></body></html>")
    _r, console = _chromium(chromium, tmp_path, "file://" + str(bad), "--dump-dom")
    assert any("logged" in ln for ln in console) and any("Uncaught" in ln for ln in console), console


def test_report_html_renders_in_chromium(chromium, offline_report, tmp_path):
    html, _js, _truth = offline_report
    page = open(html, encoding="utf-8").read()
    _no_external_fetch(page)
    r, console = _chromium(chromium, tmp_path, "file://" + html, "--dump-dom")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not console, console
    dom = _dom(r.stdout)
    assert dom.h2 == HEADINGS, dom.h2
    for cid in CHARTS:
        el = dom.ids.get(cid)
        assert el is not None, cid
        assert "js-plotly-plot" in el["class"] and el["main_svg"] >= 1, (cid, el)   # drawn by plotly.js
    assert dom.ids["chart-treemap"]["slices"] >= 10
    for sid in ("findings", "memory", "address-space", "classes", "leaks", "threads"):
        assert dom.ids[sid]["tag"] == "section"
    assert 'class="orphan"' in r.stdout                # orphan stacks highlighted in the thread table
    shot = tmp_path / "report.png"
    r, console = _chromium(chromium, tmp_path, "file://" + html, "--hide-scrollbars", "--screenshot=%s" % shot,
                           "--window-size=1400,2400")
    assert r.returncode == 0 and not console, console or r.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000
    if os.environ.get("GDB_MEMLEAK_UPDATE_SCREENSHOT") == "1":
        assert len(data) < (1 << 20)
        shutil.copyfile(str(shot), os.path.join(ROOT, "docs", "report.png"))



def test_report_baseline_shows_growth(workdir, chromium, tmp_path):
    exe = build(workdir, "growth.cpp", "growth")
    run = Running([exe])
    try:
        c1 = run.gcore(str(tmp_path / "c1"))
        os.kill(run.pid, signal.SIGUSR1)
        t2 = run.next_ready()
        c2 = run.gcore(str(tmp_path / "c2"))
    finally:
        run.kill()
    s1 = str(tmp_path / "s1.json")
    r = run_cli("--core", c1, "--exe", exe, "snapshot", s1, "--strings", STR)
    assert r.returncode == 0, r.stderr
    os.unlink(c1)
    html, js = str(tmp_path / "g.html"), str(tmp_path / "g.json")
    r = run_cli("--core", c2, "--exe", exe, "report", "--baseline", s1, "--json", js, "--html", html)
    assert r.returncode == 0, r.stderr
    doc = load_json(js)
    g = doc["growth"]
    cls = {c["name"]: c for c in g["classes"]}
    assert cls["net::Connection"]["delta"] == t2["added"]
    # the mapping holding the region (the kernel may have merged it with an anonymous neighbour below)
    at = int(t2["region"], 16)
    reg = [x for x in g["regions"] if int(x["start"], 16) <= at < int(x["start"], 16) + x["size"]]
    assert reg and reg[0]["change"] == "grown" and reg[0]["size_delta"] == 8 << 20, g["regions"][:4]
    assert g["strings"][STR]["histogram"]["4099"] == t2["added"]
    assert any(f["section"] == "growth" and "net::Connection +%d instances" % t2["added"] in f["text"]
               for f in doc["findings"])
    r = run_cli("--core", c2, "--exe", exe, "report", "--baseline", s1, "--top", "3")
    assert r.returncode == 0 and "== %s ==" % GROWTH in r.stdout, r.stderr
    r, console = _chromium(chromium, tmp_path, "file://" + html, "--dump-dom")
    assert not console, console
    dom = _dom(r.stdout)
    assert dom.h2 == HEADINGS + [GROWTH], dom.h2
    assert "js-plotly-plot" in dom.ids["chart-growth"]["class"] and dom.ids["chart-growth"]["main_svg"] >= 1
    # a watch sample, or no JSON at all, is no baseline: one line, exit 1
    r = run_cli("--core", c2, "--exe", exe, "report", "--baseline", exe)
    assert r.returncode == 1 and "not JSON" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_html_without_its_libraries_is_a_dependency_error(fixture_core, tmp_path):
    """--html needs jinja2 and plotly: without them, exit 3 and what to install, before any analysis."""
    import sys
    exe, core, _t, _d = fixture_core
    out = str(tmp_path / "r.html")
    code = ("import sys; sys.modules['jinja2'] = None; from gdb_memleak.cli import main; "
            "sys.exit(main(%r))" % (["--core", core, "--exe", exe, "report", "--html", out],))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "jinja2" in r.stderr and "make install" in r.stderr and not os.path.exists(out)


def test_report_without_a_heap_and_hostile_names(fixture_core, monkeypatch):
    """No glibc heap: maps and threads still make a whole report.  Names from the target (a
    mapping's path, a class) cannot break out of the page: escaped in HTML and in the charts' JSON."""
    from gdb_memleak.core import heap
    from gdb_memleak.core.commands import report as cmd_report
    from gdb_memleak.core.memory.elfcore import CoreTarget
    from gdb_memleak.core.report.html import render_html
    from gdb_memleak.core.report.text import render_text
    exe, core, _truth, _d = fixture_core

    class NoHeap:
        segments = []

    monkeypatch.setattr(heap, "walk_heap", lambda target, maps=None, progress_sink=None: NoHeap())
    doc = cmd_report.collect(CoreTarget(core, exe))
    assert doc["heap"] is None and doc["leaks"] is None and doc["classes"] == []
    assert any("no glibc heap" in f["text"] for f in doc["findings"])
    text = render_text(doc)
    assert all("== %s ==" % h in text for h in HEADINGS)
    evil = "</script><script>window.PWNED=1</script><!--"
    doc["maps"]["mappings"][0]["path"] = evil
    doc["memory"]["nodes"][-1]["label"] = evil
    doc["findings"].append({"section": "heap", "level": "warn", "text": evil})
    page = render_html(doc)
    assert evil not in page and "window.PWNED" in page      # there, but only as inert text
    assert page.count("</script>") == 2                     # the inlined plotly.js and the charts
