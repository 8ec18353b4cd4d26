"""The report as one self-contained HTML page: Jinja2 lays the page out, plotly makes the charts
(figures validated by plotly's Python API, drawn by plotly.js), and the plotly.js bundle is
inlined once: the page opens from a file and fetches nothing."""
from __future__ import annotations

import json
from typing import Dict

from ..errors import DependencyError
from ..textparse import human_size, signed_size
from ..vocabulary import NO_CLASS, ORPHAN, plural
from . import hex_ascii, sections

# one colour per kind of memory, shared by the treemap and the address-space strip
KIND_COLORS = {
    "main-heap": "#1f77b4", "arena-heap": "#4c9be8", "mmapped": "#17becf", "anon": "#9467bd", "stack": "#2ca02c",
    "thread-stack": "#98df8a", "orphan": "#d62728", "tls": "#bcbd22", "file": "#8c564b", "shm": "#e377c2",
    "guard": "#c7c7c7", "vdso": "#7f7f7f", "vvar": "#7f7f7f", "vsyscall": "#7f7f7f", "free": "#dddddd",
    "overhead": "#bbbbbb", "root": "#ffffff", "reserved": "#eeeeee",
}
LEAKED_COLOR = "#d62728"
LIVE_COLOR = "#1f77b4"
CONFIG = {"displaylogo": False, "responsive": True}


def check_dependencies() -> None:
    missing = []
    for mod in ("jinja2", "plotly"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        import sys
        raise DependencyError("memleak report --html needs %s for this Python (%s): run 'make install' (Debian: "
                              "apt-get install %s)" % (", ".join(missing), sys.executable or sys.version.split()[0],
                                                      " ".join("python3-" + m for m in missing)))


def _t(s) -> str:
    """Text for plotly.js, which reads a few HTML tags and entities in labels: C++ names like
    std::map<int, T> must show as written."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _script_json(obj) -> str:
    """JSON safe inside a <script> element: no '</script>', no '<!--', no line separators."""
    text = obj if isinstance(obj, str) else json.dumps(obj)
    for a, b in (("<", "\\u003c"), (">", "\\u003e"), ("/", "\\u002f"), ("\u2028", "\\u2028"),
                 ("\u2029", "\\u2029")):
        text = text.replace(a, b)
    return text


def _layout(**kw):
    base = dict(template="plotly_white", margin=dict(l=10, r=10, t=30, b=10), font=dict(size=12))
    base.update(kw)
    return base


def _figure_json(fig) -> str:
    import plotly.io as pio
    return _script_json(pio.to_json(fig, validate=True))


# -- the charts -----------------------------------------------------------------------------------

def treemap(doc: dict):
    import plotly.graph_objects as go
    nodes = doc["memory"]["nodes"]
    parent = {n["id"]: n["parent"] for n in nodes}
    kind_of = {n["id"]: n["kind"] for n in nodes if n["parent"] == "all"}
    colors, hover = [], []
    for n in nodes:                          # colour: the level-1 kind, grey for free/overhead leaves
        top = n["id"]
        while top in parent and top not in kind_of:
            top = parent[top]
        k = n["kind"] if n["kind"] in ("free", "overhead") else kind_of.get(top, "root")
        colors.append(KIND_COLORS.get(k, "#aaaaaa"))
        extra = ""
        if n.get("chunks"):
            extra += "<br>%d allocations" % n["chunks"]
        if n.get("leaked_chunks"):
            extra += "<br><b>%d leaked</b> (%s)" % (n["leaked_chunks"], human_size(n["leaked_bytes"]))
        if n.get("path"):
            extra += "<br>" + _t(n["path"])
        hover.append(_t(human_size(n["bytes"])) + extra)
    fig = go.Figure(go.Treemap(
        ids=[n["id"] for n in nodes], parents=[n["parent"] for n in nodes], labels=[_t(n["label"]) for n in nodes],
        values=[n["bytes"] for n in nodes], branchvalues="total", marker=dict(colors=colors),
        customdata=hover, hovertemplate="<b>%{label}</b><br>%{customdata}<br>%{percentRoot:.1%} of all<extra></extra>",
        texttemplate="<b>%{label}</b><br>%{customdata}", maxdepth=4, root=dict(color="#ffffff"),
        pathbar=dict(visible=True)))
    fig.update_layout(**_layout(height=620, margin=dict(l=5, r=5, t=30, b=5)))
    return fig


def address_strip(doc: dict):
    """Every mapping in address order, widths proportional to size, the unmapped gaps left out."""
    import plotly.graph_objects as go
    maps = sorted(doc["maps"]["mappings"], key=lambda m: int(m["start"], 16))
    orphans = {o["start"] for o in doc["threads"]["orphan_stacks"]}
    traces: Dict[str, dict] = {}
    pos = 0
    for m in maps:
        kind = "orphan" if m["start"] in orphans else m["kind"]
        tr = traces.setdefault(kind, {"base": [], "x": [], "text": []})
        tr["base"].append(pos)
        tr["x"].append(m["size"])
        who = m["path"] or ("LWP %d" % m["owner_lwp"] if m["owner_lwp"] else "") or m["note"] or ""
        rss = "<br>RSS %s" % _t(human_size(m["rss"])) if m.get("rss") is not None else ""
        tr["text"].append("%s-%s<br>%s %s %s<br>%s%s" % (m["start"], m["end"], _t(kind), m["perms"],
                                                        _t(human_size(m["size"])), _t(who), rss))
        pos += m["size"]
    fig = go.Figure()
    order = sorted(traces, key=lambda k: -sum(traces[k]["x"]))
    for kind in order:
        tr = traces[kind]
        label = ORPHAN if kind == "orphan" else kind
        fig.add_trace(go.Bar(name="%s (%s)" % (label, human_size(sum(tr["x"]))), y=["mappings"] * len(tr["x"]),
                             x=tr["x"], base=tr["base"], orientation="h", customdata=tr["text"],
                             hovertemplate="%{customdata}<extra></extra>",
                             marker=dict(color=KIND_COLORS.get(kind, "#aaaaaa"), line=dict(width=0.5, color="#ffffff"))))
    fig.update_layout(**_layout(height=230, barmode="overlay", bargap=0.1, showlegend=True,
                                legend=dict(orientation="h", y=-0.25),
                                xaxis=dict(showticklabels=False, showgrid=False, zeroline=False, range=[0, pos]),
                                yaxis=dict(showticklabels=False)))
    return fig


def class_bars(doc: dict, top: int):
    import plotly.graph_objects as go
    rows = list(reversed((doc.get("classes") or [])[:top]))
    names = [_t(r["name"]) for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Bar(name="reachable", y=names, x=[r["reachable"] for r in rows], orientation="h",
                         marker=dict(color=LIVE_COLOR),
                         customdata=[_t(human_size(r["bytes"])) for r in rows],
                         hovertemplate="%{y}: %{x} reachable<br>%{customdata} in use (usable sizes)<extra></extra>"))
    fig.add_trace(go.Bar(name="leaked", y=names, x=[r["leaked"] for r in rows], orientation="h",
                         marker=dict(color=LEAKED_COLOR),
                         customdata=[_t(human_size(r["leaked_bytes"])) for r in rows],
                         hovertemplate="%{y}: %{x} leaked (%{customdata})<extra></extra>"))
    fig.update_layout(**_layout(height=max(220, 28 * len(rows) + 110), barmode="stack",
                                xaxis=dict(title="objects (allocations whose first word is the class's vptr)"),
                                legend=dict(orientation="h", x=0, y=1.0, yanchor="bottom"),
                                margin=dict(l=10, r=10, t=50, b=10)))
    return fig


def leak_bars(doc: dict, top: int):
    """Leaked bytes by class and by chunk size, side by side."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    lk = doc["leaks"]
    cls = list(reversed(lk["by_class"][:top]))
    sz = list(reversed(lk["by_size"][:top]))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("by class", "by chunk size"), horizontal_spacing=0.22)
    fig.add_trace(go.Bar(y=[_t(e["name"]) for e in cls], x=[e["bytes"] for e in cls], orientation="h",
                         marker=dict(color=LEAKED_COLOR), name="by class",
                         customdata=[[_t(human_size(e["bytes"])), e["chunks"], e["direct_chunks"]] for e in cls],
                         hovertemplate="%{y}: %{customdata[0]} in %{customdata[1]} chunks "
                                       "(%{customdata[2]} direct)<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(y=["%d B" % e["size"] for e in sz], x=[e["bytes"] for e in sz], orientation="h",
                         marker=dict(color="#ff7f0e"), name="by chunk size",
                         customdata=[[_t(human_size(e["bytes"])), e["chunks"]] for e in sz],
                         hovertemplate="%{y} chunks: %{customdata[1]} leaked, %{customdata[0]}<extra></extra>"),
                  row=1, col=2)
    fig.update_xaxes(title_text="leaked bytes")
    fig.update_yaxes(type="category")
    fig.update_layout(**_layout(height=max(240, 26 * max(len(cls), len(sz)) + 100), showlegend=False,
                                margin=dict(l=10, r=10, t=60, b=10)))
    return fig


def growth_bars(doc: dict, top: int):
    """What grew: the writable regions and the classes, by bytes."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    g = doc["growth"]
    regs = [r for r in g["regions"] if "w" in (r["perms"] or "")[:3]][:top]
    cls = g["classes"][:top]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("regions (bytes)", "classes (bytes)"), horizontal_spacing=0.25)
    regs, cls = list(reversed(regs)), list(reversed(cls))
    fig.add_trace(go.Bar(y=["%s %s" % (r["kind"], r["start"]) for r in regs],
                         x=[max(r["size_delta"], r["rss_delta"] or 0) if r["change"] != "removed" else r["size_delta"]
                            for r in regs], orientation="h",
                         marker=dict(color=["#2ca02c" if r["size_delta"] < 0 else LEAKED_COLOR for r in regs]),
                         customdata=[[r["change"], _t(signed_size(r["size_delta"])), _t(signed_size(r["rss_delta"]))]
                                     for r in regs],
                         hovertemplate="%{y}: %{customdata[0]}, size %{customdata[1]}, RSS %{customdata[2]}"
                                       "<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(y=[_t(r["name"]) for r in cls], x=[r["bytes_delta"] for r in cls], orientation="h",
                         marker=dict(color=["#2ca02c" if r["bytes_delta"] < 0 else LEAKED_COLOR for r in cls]),
                         customdata=[[r["before"], r["after"], "%+d" % r["delta"]] for r in cls],
                         hovertemplate="%{y}: %{customdata[0]} -> %{customdata[1]} (%{customdata[2]})"
                                       "<extra></extra>"), row=1, col=2)
    fig.update_yaxes(type="category")
    fig.update_layout(**_layout(height=max(240, 26 * max(len(regs), len(cls), 1) + 100), showlegend=False,
                                margin=dict(l=10, r=10, t=60, b=10)))
    return fig


def charts(doc: dict, top: int) -> Dict[str, str]:
    """{chart id: the figure's JSON, safe inside <script>}."""
    out = {"chart-treemap": _figure_json(treemap(doc)), "chart-address-space": _figure_json(address_strip(doc))}
    if doc.get("classes"):
        out["chart-classes"] = _figure_json(class_bars(doc, top))
    if doc.get("leaks") and doc["leaks"]["leaked"]["chunks"]:
        out["chart-leaks"] = _figure_json(leak_bars(doc, top))
    if doc.get("growth") and (doc["growth"]["regions"] or doc["growth"]["classes"]):
        out["chart-growth"] = _figure_json(growth_bars(doc, top))
    return out


# -- the page ---------------------------------------------------------------------------------------

def _environment():
    import jinja2
    from .templates import PAGE
    env = jinja2.Environment(loader=jinja2.DictLoader({"report.html": PAGE}),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["size"] = human_size
    env.filters["signed"] = signed_size
    env.filters["hexascii"] = hex_ascii
    env.filters["plural"] = lambda n, word: plural(n, word)
    env.filters["pct"] = lambda part, whole: ("%.0f%%" % (100.0 * part / whole)) if whole else "-"
    return env


def plotly_js() -> str:
    from plotly.offline import get_plotlyjs
    return get_plotlyjs()


def render_html(doc: dict, top: int = 15) -> str:
    check_dependencies()
    import plotly
    from markupsafe import Markup
    from ... import __version__
    env = _environment()
    ch = charts(doc, top)
    tgt = doc["target"]
    return env.get_template("report.html").render(
        doc=doc, sections=sections(doc), top=top, NO_CLASS=NO_CLASS, ORPHAN=ORPHAN,
        charts={k: Markup(v) for k, v in ch.items()}, config=Markup(_script_json(CONFIG)),
        plotlyjs=Markup(plotly_js().replace("</script", "<\\/script")), plotly_version=plotly.__version__,
        version=__version__, exe=tgt.get("exe") or tgt.get("executable") or "?", kind_colors=KIND_COLORS)
