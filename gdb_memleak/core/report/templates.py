"""The page template (Jinja2).  Kept in a module, not a data file, so that every install of the
package (editable, wheel, gdb's sys.path) has it."""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="gdb_memleak {{ version }}">
<title>memleak report: {{ exe }} (pid {{ doc.target.pid }})</title>
<style>
  :root { --fg: #1d232b; --muted: #5d6875; --line: #d9dee4; --warn: #b3261e; --warn-bg: #fdecea;
          --info-bg: #eef4fb; --orphan-bg: #fde2e0; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
         color: var(--fg); background: #f6f7f9; }
  header { background: #1d232b; color: #fff; padding: 18px 28px 14px; }
  header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
  header .meta { color: #c5ccd4; font-size: 13px; }
  nav { position: sticky; top: 0; z-index: 10; background: #fff; border-bottom: 1px solid var(--line);
        padding: 8px 28px; font-size: 13px; }
  nav a { color: #1f5fa8; text-decoration: none; margin-right: 16px; }
  main { max-width: 1340px; margin: 0 auto; padding: 8px 28px 40px; }
  section { background: #fff; border: 1px solid var(--line); border-radius: 6px; margin: 18px 0; padding: 6px 20px 16px; }
  h2 { font-size: 18px; margin: 12px 0 8px; }
  h3 { font-size: 14px; margin: 16px 0 6px; color: var(--muted); font-weight: 600; }
  p.note { color: var(--muted); margin: 4px 0 10px; font-size: 13px; }
  ul.findings { list-style: none; padding: 0; margin: 6px 0; }
  ul.findings li { padding: 7px 10px; margin: 5px 0; border-radius: 4px; background: var(--info-bg);
                   border-left: 4px solid #4c9be8; }
  ul.findings li.warn { background: var(--warn-bg); border-left-color: var(--warn); }
  ul.findings .tag { display: inline-block; min-width: 62px; font-size: 11px; text-transform: uppercase;
                     letter-spacing: .04em; color: var(--muted); }
  table.data { border-collapse: collapse; width: 100%; margin: 6px 0 10px; font-size: 13px; }
  table.data th, table.data td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line);
                                 vertical-align: top; }
  table.data th { background: #f0f2f5; font-weight: 600; white-space: nowrap; }
  table.data td.num, table.data th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  table.data td.mono { white-space: nowrap; }
  table.data tr.orphan td { background: var(--orphan-bg); }
  table.data tr.orphan td.why { color: var(--warn); font-weight: 600; }
  code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
  .chart { width: 100%; min-height: 200px; }
  .grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
  .swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; }
  footer { color: var(--muted); font-size: 12px; text-align: center; padding: 10px; }
</style>
<script>{{ plotlyjs }}</script>
</head>
<body>
<header>
  <h1>memleak report: {{ exe }}</h1>
  <div class="meta">pid {{ doc.target.pid }} &middot; {{ doc.target.kind }} &middot; {{ doc.target.arch }}
    {% if doc.target.build_id %}&middot; build-id <span class="mono">{{ doc.target.build_id }}</span>{% endif %}
    {% if doc.target.core %}&middot; core {{ doc.target.core }}{% endif %}
    &middot; {{ doc.time }} &middot; analysed in {{ "%.2f"|format(doc.seconds) }} s</div>
</header>
<nav>{% for id, title in sections.items() %}<a href="#{{ id }}">{{ title }}</a>{% endfor %}</nav>
<main>

<section id="findings">
  <h2>{{ sections["findings"] }}</h2>
  {% if doc.findings %}
  <ul class="findings">
  {% for f in doc.findings %}
    <li class="{{ f.level }}"><span class="tag">{{ f.section }}</span> {{ f.text }}</li>
  {% endfor %}
  </ul>
  {% else %}<p>No findings.</p>{% endif %}
</section>

<section id="memory">
  <h2>{{ sections["memory"] }}</h2>
  <p class="note">Every writable mapping, by kind &rarr; arena, heap, thread or module &rarr; C++ class (the vptr at
    an in-use chunk's start; chunk sizes). Click a box to zoom in, the bar above to zoom out.</p>
  <div id="chart-treemap" class="chart"></div>
  {% if doc.heap %}
  <h3>malloc arenas (found by: {{ doc.heap.discovery }})</h3>
  <table class="data">
    <tr><th>arena</th><th>malloc_state</th><th class="num">heaps</th><th class="num">size</th>
        <th class="num">in use</th><th class="num">in-use bytes</th><th class="num">free chunks</th>
        <th class="num">free bytes</th><th class="num">top</th><th class="num">frag</th></tr>
    {% for a in doc.heap.arenas %}
    <tr><td>{{ a.kind }}</td><td class="mono">{{ a.address or "(by shape)" }}</td><td class="num">{{ a.heaps|length }}</td>
        <td class="num">{{ a.size|size }}</td><td class="num">{{ a.in_use_chunks }}</td>
        <td class="num">{{ a.in_use_bytes|size }}</td>
        <td class="num">{{ a.free_chunks }} ({{ a.tcache_chunks }} tcache, {{ a.fastbin_chunks }} fast)</td>
        <td class="num">{{ a.free_bytes|size }}</td><td class="num">{{ a.top_size|size }}</td>
        <td class="num">{{ "%.1f%%"|format(100 * a.fragmentation) }}</td></tr>
    {% endfor %}
    <tr><td>mmapped</td><td></td><td></td><td class="num">{{ doc.heap.mmapped.mapped_bytes|size }}</td>
        <td class="num">{{ doc.heap.mmapped.chunks }}</td><td class="num">{{ doc.heap.mmapped.bytes|size }}</td>
        <td></td><td></td><td></td><td></td></tr>
  </table>
  {% set acc = doc.heap.accounting %}
  {% if acc.total %}
  <h3>writable anonymous memory: {{ acc.total|size }}</h3>
  <table class="data" style="width:auto">
    <tr><th>where</th><th class="num">bytes</th><th class="num">share</th></tr>
    {% for key, label in [("main_heap", "main heap"), ("arena_heaps", "arena heaps"), ("mmapped_chunks", "mmapped chunks"),
                          ("thread_stacks", "thread stacks (orphan stacks included)"), ("other", "other (module .bss, static TLS)"),
                          ("unexplained", "unexplained")] %}
    <tr><td>{{ label }}</td><td class="num">{{ acc[key]|size }}</td><td class="num">{{ acc[key]|pct(acc.total) }}</td></tr>
    {% endfor %}
  </table>
  {% endif %}
  {% else %}
  <p class="note">No glibc heap was found: only mappings and threads are shown.</p>
  {% endif %}
</section>

<section id="address-space">
  <h2>{{ sections["address-space"] }}</h2>
  <p class="note">Every mapping in address order, coloured by kind; widths are proportional to size and the unmapped
    gaps between mappings are left out. Hover for addresses.</p>
  <div id="chart-address-space" class="chart"></div>
  <table class="data" style="width:auto">
    <tr><th>kind</th><th class="num">mappings</th><th class="num">size</th></tr>
    {% for k, v in doc.maps.totals.items()|sort(attribute="1.size", reverse=True) %}
    <tr><td><span class="swatch" style="background: {{ kind_colors.get(k, '#aaaaaa') }}"></span>{{ k }}</td>
        <td class="num">{{ v.count }}</td><td class="num">{{ v.size|size }}</td></tr>
    {% endfor %}
  </table>
</section>

<section id="classes">
  <h2>{{ sections["classes"] }}</h2>
  {% if doc.classes %}
  <p class="note">Allocations per C++ class (vptr at the chunk's start, as <code>vtable-census --heap --at-chunk-start</code>
    counts them), split into reachable and leaked.</p>
  <div id="chart-classes" class="chart"></div>
  <table class="data">
    <tr><th>class</th><th>module</th><th class="num">in use</th><th class="num">reachable</th><th class="num">leaked</th>
        <th class="num">size (usable)</th><th class="num">bytes</th></tr>
    {% for c in doc.classes[:top] %}
    <tr><td class="mono">{{ c.name }}</td><td>{{ c.module }}</td><td class="num">{{ c.count }}</td>
        <td class="num">{{ c.reachable }}</td><td class="num">{{ c.leaked }}</td>
        <td class="num">{{ c.size|size }}</td><td class="num">{{ c.bytes|size }}</td></tr>
    {% endfor %}
  </table>
  {% if doc.classes|length > top %}<p class="note">{{ doc.classes|length - top }} more classes in the JSON.</p>{% endif %}
  {% else %}
  <p class="note">{{ (doc.census or {}).get("note") or "No C++ objects counted (no glibc heap)." }}</p>
  {% endif %}
</section>

<section id="leaks">
  <h2>{{ sections["leaks"] }}</h2>
  {% if doc.leaks %}
  {% set t = doc.leaks.leaked %}
  <p><b>{{ t.chunks|plural("leaked chunk") }}, {{ t.bytes|size }}</b> ({{ t.direct_chunks }} direct, {{ t.direct_bytes|size }};
    {{ t.indirect_chunks }} indirect, {{ t.indirect_bytes|size }}) of {{ doc.leaks.in_use.chunks }} in use,
    {{ doc.leaks.in_use.bytes|size }}. Sizes are glibc chunk sizes.</p>
  {% if t.chunks %}
  <div id="chart-leaks" class="chart"></div>
  <div class="grid2">
    <div>
      <h3>by class</h3>
      <table class="data">
        <tr><th class="num">leaked</th><th class="num">direct</th><th class="num">bytes</th><th>class</th></tr>
        {% for e in doc.leaks.by_class[:top] %}
        <tr><td class="num">{{ e.chunks }}</td><td class="num">{{ e.direct_chunks }}</td><td class="num">{{ e.bytes|size }}</td>
            <td class="mono">{{ e.name }}</td></tr>
        {% endfor %}
      </table>
    </div>
    <div>
      <h3>by chunk size</h3>
      <table class="data">
        <tr><th class="num">chunk size</th><th class="num">leaked</th><th class="num">bytes</th></tr>
        {% for e in doc.leaks.by_size[:top] %}
        <tr><td class="num">{{ e.size|size }}</td><td class="num">{{ e.chunks }}</td><td class="num">{{ e.bytes|size }}</td></tr>
        {% endfor %}
      </table>
    </div>
  </div>
  <h3>examples (direct leaks first, biggest first)</h3>
  <table class="data">
    <tr><th>address</th><th class="num">size</th><th>leak</th><th>class</th><th>first bytes</th></tr>
    {% for e in doc.leaks.examples %}
    <tr><td class="mono">{{ e.address }}</td><td class="num">{{ e.size|size }}</td><td>{{ e.kind }}</td>
        <td class="mono">{{ e["class"] or NO_CLASS }}</td><td class="mono">{{ e.first_bytes|hexascii }}</td></tr>
    {% endfor %}
  </table>
  {% endif %}
  {% if doc.leaks.excluded_roots %}
  <p class="note">Not roots (their pointers are stale): {% for r in doc.leaks.excluded_roots %}<span class="mono">{{ r.start }}-{{ r.end }}</span> ({{ r.reason }}){% if not loop.last %}; {% endif %}{% endfor %}.</p>
  {% endif %}
  {% else %}
  <p class="note">No glibc heap: no leak check.</p>
  {% endif %}
</section>

<section id="threads">
  <h2>{{ sections["threads"] }}</h2>
  {% set tt = doc.threads.totals %}
  <p>{{ tt.threads|plural("thread") }}, {{ tt.stack_bytes|size }} of thread stacks in {{ tt.stacks|plural("mapping") }};
    <b>{{ tt.orphan_stacks|plural(ORPHAN) }}, {{ tt.orphan_bytes|size }}</b>;
    RLIMIT_STACK {{ tt.rlimit_stack|size if tt.rlimit_stack else "unknown" }} ({{ tt.rlimit_source }}).</p>
  <table class="data">
    <tr><th>#</th><th>LWP</th><th>name</th><th>SP</th><th>frame 0</th><th>stack</th><th class="num">size</th>
        <th class="num">used</th><th class="num">use</th><th>guard</th><th>owner</th></tr>
    {% for x in doc.threads.threads %}
    <tr class="thread"><td>{{ x.num }}</td><td>{{ x.lwp }}</td><td>{{ x.name or "" }}</td><td class="mono">{{ x.sp }}</td>
        <td class="mono">{{ x.function or "?" }}</td>
        <td class="mono">{% if x.stack_start %}{{ x.stack_start }}-{{ x.stack_end }}{% else %}(SP in no mapping){% endif %}</td>
        <td class="num">{{ x.stack_size|size }}</td><td class="num">{{ x.used|size }}</td>
        <td class="num">{{ x.used|pct(x.stack_size) if x.stack_size else "-" }}</td><td>{{ "yes" if x.guard else "no" }}</td>
        <td>live thread</td></tr>
    {% endfor %}
    {% for o in doc.threads.orphan_stacks %}
    <tr class="orphan"><td>-</td><td>-</td><td></td><td></td><td></td>
        <td class="mono">{{ o.start }}-{{ o.end }}</td><td class="num">{{ o.size|size }}</td><td></td><td></td>
        <td>{{ "yes" if o.guard else "no" }}</td><td class="why">{{ ORPHAN }}: {{ o.why }}</td></tr>
    {% endfor %}
  </table>
  {% if doc.threads.findings %}
  <ul class="findings">{% for f in doc.threads.findings %}<li class="warn">{{ f }}</li>{% endfor %}</ul>
  {% endif %}
</section>

{% if doc.growth %}
{% set g = doc.growth %}
<section id="growth">
  <h2>{{ sections["growth"] }}</h2>
  <p class="note">From the baseline snapshot ({{ g.a.time or "?" }}) to now.</p>
  {% if g.findings %}
  <ul class="findings">{% for f in g.findings %}<li class="warn">{{ f }}</li>{% endfor %}</ul>
  {% else %}<p>Nothing grew.</p>{% endif %}
  {% if "chart-growth" in charts %}<div id="chart-growth" class="chart"></div>{% endif %}
  {% if g.regions %}
  <h3>regions</h3>
  <table class="data">
    <tr><th>start</th><th>kind</th><th>change</th><th class="num">size</th><th class="num">rss</th><th>path/note</th></tr>
    {% for r in g.regions[:top] %}
    <tr><td class="mono">{{ r.start }}</td><td>{{ r.kind }}</td><td>{{ r.change }}</td><td class="num">{{ r.size_delta|signed }}</td>
        <td class="num">{{ r.rss_delta|signed }}</td><td>{{ r.path or r.note or "" }}</td></tr>
    {% endfor %}
  </table>
  {% endif %}
  {% if g.classes %}
  <h3>classes</h3>
  <table class="data">
    <tr><th>class</th><th class="num">before</th><th class="num">after</th><th class="num">delta</th><th class="num">bytes</th></tr>
    {% for r in g.classes[:top] %}
    <tr><td class="mono">{{ r.name }}</td><td class="num">{{ r.before }}</td><td class="num">{{ r.after }}</td>
        <td class="num">{{ "%+d"|format(r.delta) }}</td><td class="num">{{ r.bytes_delta|signed }}</td></tr>
    {% endfor %}
  </table>
  {% endif %}
  {% if g.sizes %}
  <h3>chunk sizes</h3>
  <table class="data" style="width:auto">
    <tr><th class="num">chunk size</th><th class="num">delta</th><th class="num">bytes</th></tr>
    {% for r in g.sizes[:top] %}
    <tr><td class="num">{{ r.size }}</td><td class="num">{{ "%+d"|format(r.delta) }}</td><td class="num">{{ (r.delta * r.size)|signed }}</td></tr>
    {% endfor %}
  </table>
  {% endif %}
</section>
{% endif %}

</main>
<footer>gdb_memleak {{ version }} &middot; charts by plotly {{ plotly_version }} (inlined) &middot;
  the same data: <code>memleak report --json FILE</code></footer>
<script>
(function () {
  var config = {{ config }};
  var figures = {
  {% for id, fig in charts.items() %}
    {{ id|tojson }}: {{ fig }}{% if not loop.last %},{% endif %}

  {% endfor %}
  };
  Object.keys(figures).forEach(function (id) {
    var el = document.getElementById(id);
    if (el) { Plotly.newPlot(el, figures[id].data, figures[id].layout, config); }
  });
})();
</script>
</body>
</html>
"""
