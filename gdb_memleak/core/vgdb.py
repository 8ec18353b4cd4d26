"""Parsers for valgrind gdbserver monitor output (memcheck 3.x): leak_check, block_list and
who_points_at; and the growth timeline of repeated leak checks.  Pure text in, data out.

Accepted: '==PID== ' prefixes (standalone vgdb) or none (gdb's `monitor`), thousands separators,
'(+N)'/'(-N)' deltas, '(D direct, I indirect)' splits, `limited` truncation, 32/64-bit addresses.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional

KINDS = {"definitely lost": "definite", "indirectly lost": "indirect", "possibly lost": "possible",
         "still reachable": "reachable"}
SUMMARY_KEYS = {"definitely lost": "definitely_lost", "indirectly lost": "indirectly_lost",
                "possibly lost": "possibly_lost", "still reachable": "still_reachable", "suppressed": "suppressed"}

_PREFIX = re.compile(r"^==\d+==\s?")
_N = r"[0-9][0-9,]*"      # a count: digits with thousands separators (never just commas)
_D = r"(?: \(([+-]%s)\))?" % _N
_RECORD = re.compile(
    r"^(%s)%s(?: \((%s)%s direct, (%s)%s indirect\))? bytes in (%s)%s blocks are "
    r"(definitely lost|indirectly lost|possibly lost|still reachable) in (?:new )?loss record (%s) of (%s)"
    % (_N, _D, _N, _D, _N, _D, _N, _D, _N, _N))
_FRAME = re.compile(r"^\s*(at|by) (0x[0-9A-Fa-f]{1,16}): (.*)$")
_SUMMARY = re.compile(r"^\s*(definitely lost|indirectly lost|possibly lost|still reachable|suppressed): "
                      r"(%s)%s bytes in (%s)%s blocks" % (_N, _D, _N, _D))
_BLOCK = re.compile(r"^(\s*)(0x[0-9A-Fa-f]+)\[(%s)\](?: indirect loss record (%s))?" % (_N, _N))
_POINTS = re.compile(r"^\*(0x[0-9A-Fa-f]+) (interior )?points at (?:(%s) bytes inside )?(0x[0-9A-Fa-f]+)" % _N)
_REG = re.compile(r"^tid (\d+) register (\S+) (interior )?points at (?:(%s) bytes inside )?(0x[0-9A-Fa-f]+)" % _N)
_SEARCH = re.compile(r"^Searching for pointers (?:pointing in (%s) bytes from|to) (0x[0-9A-Fa-f]+)" % _N)


def _num(s: Optional[str]) -> Optional[int]:
    return int(s.replace(",", "")) if s is not None else None   # _N guarantees a digit


def _lines_ok(text) -> str:
    """The text to parse: bytes are decoded (invalid UTF-8 replaced), None is empty."""
    if text is None:
        return ""
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", "replace")
    return str(text)


def _lines(text: str) -> List[str]:
    return [_PREFIX.sub("", ln.rstrip("\r")) for ln in _lines_ok(text).splitlines()]


def parse_frame(line: str) -> Optional[dict]:
    m = _FRAME.match(line)
    if not m:
        return None
    rest = m.group(3).strip()
    function, location = rest, ""
    # the location is the last parenthesised group: (file.c:12) or (in /lib/x.so)
    if rest.endswith(")"):
        depth = 0
        for i in range(len(rest) - 1, -1, -1):
            depth += rest[i] == ")"
            depth -= rest[i] == "("
            if depth == 0:
                function, location = rest[:i].rstrip(), rest[i + 1:-1]
                break
    return {"pc": m.group(2).lower(), "function": function, "location": location}


def _record_from(m) -> dict:
    return {"record": _num(m.group(10)), "of": _num(m.group(11)), "kind": KINDS[m.group(9)],
            "bytes": _num(m.group(1)), "bytes_delta": _num(m.group(2)),
            "direct_bytes": _num(m.group(3)), "indirect_bytes": _num(m.group(5)),
            "blocks": _num(m.group(7)), "blocks_delta": _num(m.group(8)), "stack": []}


def parse_leak_check(text: str) -> dict:
    """{summary, records, total_records, limited, errors} from `leak_check` output."""
    records: List[dict] = []
    summary: Dict[str, dict] = {}
    errors = []
    cur = None
    total = None
    for ln in _lines(text):
        m = _RECORD.match(ln)
        if m:
            cur = _record_from(m)
            total = cur["of"]
            records.append(cur)
            continue
        f = parse_frame(ln) if cur is not None else None
        if f is not None:
            cur["stack"].append(f)
            continue
        s = _SUMMARY.match(ln)
        if s:
            cur = None
            summary[SUMMARY_KEYS[s.group(1)]] = {"bytes": _num(s.group(2)), "bytes_delta": _num(s.group(3)),
                                                 "blocks": _num(s.group(4)), "blocks_delta": _num(s.group(5))}
            continue
        if not ln.strip():
            cur = None
        low = ln.lower()
        if ("invalid" in low or "error" in low or "unknown" in low or "expecting" in low) and "loss record" not in low:
            errors.append(ln.strip())
    for k in SUMMARY_KEYS.values():
        summary.setdefault(k, {"bytes": 0, "bytes_delta": None, "blocks": 0, "blocks_delta": None})
    return {"summary": summary, "records": records, "total_records": total,
            "limited": bool(total is not None and len(records) < total), "errors": errors,
            "no_leaks": "no leaks are possible" in _lines_ok(text)}


def parse_block_list(text: str) -> dict:
    """{records: [{record, kind, bytes, blocks, stack, blocks: [{address, size, indirect_of_record}]}]}"""
    records: List[dict] = []
    cur = None
    errors = []
    for ln in _lines(text):
        m = _RECORD.match(ln)
        if m:
            cur = _record_from(m)
            cur["block_list"] = []
            records.append(cur)
            continue
        if cur is None:
            if ln.strip() and "sending command" not in ln:
                errors.append(ln.strip())
            continue
        f = parse_frame(ln)
        if f is not None:
            cur["stack"].append(f)
            continue
        b = _BLOCK.match(ln)
        if b:
            cur["block_list"].append({"address": b.group(2).lower(), "size": _num(b.group(3)),
                                      "depth": len(b.group(1)) // 2,
                                      "indirect_of_record": _num(b.group(4))})
    return {"records": records, "errors": errors}


def parse_who_points_at(text: str) -> dict:
    target, length = None, None
    refs: List[dict] = []
    cur = None
    for ln in _lines(text):
        s = _SEARCH.search(ln)
        if s:
            length = _num(s.group(1)) or 1
            target = s.group(2).lower()
            continue
        p = _POINTS.match(ln.strip())
        r = _REG.match(ln.strip())
        if p:
            cur = {"address": p.group(1).lower(), "points_at": p.group(4).lower(), "interior": bool(p.group(2)),
                   "offset": _num(p.group(3)) or 0, "where": "memory", "description": [], "stack": []}
            refs.append(cur)
            continue
        if r:
            cur = {"address": None, "points_at": r.group(5).lower(), "interior": bool(r.group(3)),
                   "offset": _num(r.group(4)) or 0, "where": "register", "thread": int(r.group(1)),
                   "register": r.group(2), "description": [], "stack": []}
            refs.append(cur)
            continue
        if cur is None or not ln.strip():
            continue
        f = parse_frame(ln)
        if f is not None:
            cur["stack"].append(f)
        elif "sending command" not in ln:
            cur["description"].append(ln.strip())
    for ref in refs:
        d = " ".join(ref["description"])
        ref["description"] = d
        m = re.search(r"on thread (\d+)'s stack", d)
        if m:
            ref["where"] = "stack"
            ref["thread"] = int(m.group(1))
        m = re.search(r"inside a block of size (%s)" % _N, d)
        if m:
            ref["where"] = "block"
            ref["block_size"] = _num(m.group(1))
        m = re.search(r'inside data symbol "([^"]+)"', d)
        if m:
            ref["where"] = "data"
            ref["symbol"] = m.group(1)
    return {"target": target, "length": length, "referrers": refs}


def record_key(rec: dict) -> str:
    """Identity of a loss record across leak checks (record numbers change): kind + stack."""
    return rec["kind"] + "|" + ";".join("%s@%s" % (f["function"], f["location"]) for f in rec["stack"])


def timeline(checks: List[dict]) -> List[dict]:
    """Per record (by kind + stack) across checks: bytes/blocks at each check and the growth at
    each step.  With 'increased' checks valgrind leaves out records that did not grow: their last
    value is carried over.  'grew_every_time': it grew at every check after the first."""
    rows: Dict[str, dict] = {}
    n = len(checks)
    for k, chk in enumerate(checks):
        for rec in chk["records"]:
            key = record_key(rec)
            row = rows.setdefault(key, {"key": key, "kind": rec["kind"], "stack": rec["stack"],
                                        "bytes": [None] * n, "blocks": [None] * n, "deltas": [0] * n})
            row["bytes"][k] = rec["bytes"]
            row["blocks"][k] = rec["blocks"]
            row["deltas"][k] = rec["bytes_delta"] if rec["bytes_delta"] is not None else None
    out = []
    for row in rows.values():
        last_b, last_n = None, None
        for k in range(n):
            if row["bytes"][k] is None:
                row["bytes"][k], row["blocks"][k] = last_b, last_n
                row["deltas"][k] = 0
            elif row["deltas"][k] is None:
                row["deltas"][k] = row["bytes"][k] - (last_b or 0)
            last_b, last_n = row["bytes"][k], row["blocks"][k]
        known = [b for b in row["bytes"] if b is not None]
        row["growth"] = (known[-1] - known[0]) if known else 0
        row["grew_every_time"] = n > 1 and all(d > 0 for d in row["deltas"][1:])
        out.append(row)
    out.sort(key=lambda r: (-r["growth"], r["key"]))
    return out
