#!/usr/bin/env python3
"""Turns bench/run.sh's results (JSON lines) into the table it prints, a
markdown report and an SVG chart (written by hand: no plotting library).

usage: bench/report.py RESULTS.jsonl [--md OUT.md] [--svg OUT.svg]
                       [--command CMD] [--machine TEXT] [--elapsed SECONDS]
                       [--readme README.md]   (--all: the README's headline table)
"""
import argparse
import json
import statistics
from collections import OrderedDict
from html import escape

SCENARIOS = {
    1: "Throughput, 64 B UDP",
    2: "New connections per second",
    3: "Scale",
    4: "Port pool",
    5: "Latency (round trip)",
    6: "Ceiling of this box",
    7: "Bulk TCP (iperf3)",
}
# Metrics where less is better: the ratio is still Egret / kernel.
LOWER_IS_BETTER = ("us", "bytes", "sessions", "retransmits")


def load(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    groups = OrderedDict()
    for r in rows:
        key = (r["scenario"], r["case"], r["metric"])
        g = groups.setdefault(key, {"egret": [], "kernel": [], "ceiling": [], "floor": [], "contention": [], "notes": {}})
        if r["value"] is not None:
            g[r["system"]].append(r["value"])
        if r.get("contention", -1) >= 0:
            g["contention"].append(r["contention"])
        g["notes"].setdefault(r["system"], r.get("note", ""))
    return rows, OrderedDict(sorted(groups.items(), key=lambda kv: kv[0][0]))


def stat(vals):
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals), len(vals)


def fmt(v):
    if v is None:
        return "–"
    a = abs(v)
    if a >= 100000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def cell(s):
    if s is None:
        return "–"
    med, lo, hi, n = s
    if n == 1 or lo == hi:
        return fmt(med)
    return f"{fmt(med)} ({fmt(lo)}–{fmt(hi)})"


def kernel_ref(groups, key):
    """The kernel's figures for a row: the same row, or (port pool) the
    scenario's kernel-only row with the same metric."""
    g = groups[key]
    if g["kernel"]:
        return stat(g["kernel"])
    for (sc, case, metric), other in groups.items():
        if sc == key[0] and metric == key[2] and other["kernel"] and not other["egret"]:
            return stat(other["kernel"])
    return None


def ratio(e, k):
    if not e or not k or k[0] == 0 or e[0] == 0:
        return None
    return e[0] / k[0]


# What a row's figure is, where the case and metric do not say it.
EXPLAIN = {
    (1, "Mpps"): "translated frames the sink counted per second",
    (2, "new flows/s (k)"): "generator floods new 5-tuples; translated frames per second at the sink = sessions created per second",
    (2, "handshakes/s (k)"): "most final ACKs per second at the sink, SYN rate raised 1.4x per step while >= 90% complete, then one step between the last pass and the first miss",
    (3, "sessions held"): "Egret refuses new flows once full (never evicts); the kernel early-drops unreplied entries once full",
    (3, "bytes"): "Egret: RSS at full / sessions held (tables sized up front, UMEM, code); kernel: nf_conntrack slab object",
    (4, "flows translated"): "distinct translated 5-tuples the sink saw; each flow sent twice",
    (5, "p50 us"): "UDP ping-pong, one probe in flight, echoed by XDP at the sink; load as a share of the path's own 100k-flow Mpps",
    (6, "Mpps"): "the same generator into XDP_DROP on the gateway's inside veth: what this box moves at all",
}


SEEN = set()


def table(groups):
    ceiling = None
    for (sc, _, _), g in groups.items():
        if sc == 6 and g["ceiling"]:
            ceiling = stat(g["ceiling"])
    out = []
    for key, g in groups.items():
        sc, case, metric = key
        e = stat(g["egret"])
        k = stat(g["kernel"]) if g["kernel"] else None
        c = stat(g["ceiling"])
        kr = kernel_ref(groups, key)
        r = ratio(e, kr)
        notes = []
        for (esc, emetric), text in EXPLAIN.items():
            if esc == sc and metric.startswith(emetric) and (sc, emetric) not in SEEN:
                notes.append(text)
                SEEN.add((sc, emetric))
        f = stat(g["floor"])
        if f and e and metric == "retransmits":
            notes.append(f"I/O floor {fmt(f[0])}")
        elif f and e and f[0]:
            notes.append(f"I/O floor (same AF_XDP sockets and rings, MAC swap only, no NAT) {fmt(f[0])}: Egret {100 * e[0] / f[0]:.0f}% of it")
        if sc == 1 and ceiling:
            parts = [f"{name} {100 * s[0] / ceiling[0]:.0f}%" for name, s in (("Egret", e), ("kernel", k)) if s]
            notes.append(" / ".join(parts) + " of the ceiling")
        if any(metric.endswith(x) for x in LOWER_IS_BETTER) and sc != 3:
            notes.append("lower is better")
        if sc == 3 and metric == "bytes":
            notes.append("lower is better")
        if sc == 4 and e and not g["kernel"] and kr:
            notes.append("ratio vs the kernel's one-address masquerade")
        cont = max(g["contention"]) if g["contention"] else None
        out.append(
            {
                "floor": f,
                "scenario": sc,
                "case": case,
                "metric": metric,
                "egret": e if e else None,
                "kernel": k if k else (c if c else None),
                "system2": "ceiling" if c and not k else "kernel",
                "ratio": r,
                "contention": cont,
                "note": "; ".join(notes),
            }
        )
    return out


def find_group(groups, sc, case_part, metric):
    """The group of scenario `sc` whose case contains `case_part`, if any."""
    for (s, case, m), g in groups.items():
        if s == sc and case_part in case and m == metric:
            return g
    return None


def targets(groups):
    def find(sc, case_part, metric):
        g = find_group(groups, sc, case_part, metric)
        return (stat(g["egret"]), stat(g["kernel"]), g) if g else (None, None, None)

    res = []
    e, k, _ = find(1, "100000 flows", "Mpps")
    r = ratio(e, k)
    res.append(("≥ 1.5× the kernel's Mpps per gateway core at 100k flows", r, r is not None and r >= 1.5))
    e, k, _ = find(2, "UDP", "new flows/s (k)")
    r = ratio(e, k)
    res.append(("≥ 3× the kernel's new-connection rate (UDP)", r, r is not None and r >= 3))
    e, k, _ = find(2, "TCP", "handshakes/s (k)")
    r = ratio(e, k)
    res.append(("≥ 3× the kernel's new-connection rate (TCP handshakes)", r, r is not None and r >= 3))
    e, k, _ = find(3, "concurrent sessions", "sessions held")
    ev, _, _ = find(3, "evicted", "sessions")
    r = ratio(e, k)
    no_evict = ev is not None and ev[2] == 0
    res.append(("≥ 4× the kernel's concurrent sessions, no live session evicted", r, r is not None and r >= 4 and no_evict))
    return res


def targets_16(groups):
    """Issue 16's targets: the floor share, p99 under load, new flows."""
    res = []
    for flows in ("100000", "1000000"):
        g = find_group(groups, 1, f"{flows} flows", "Mpps")
        e, f = (stat(g["egret"]), stat(g["floor"])) if g else (None, None)
        share = e[0] / f[0] if e and f else None
        res.append((f"≥ 95% of the I/O floor at {int(flows):,} flows", share, share is not None and share >= 0.95, "%"))
    g = find_group(groups, 2, "UDP", "new flows/s (k)")
    r = ratio(stat(g["egret"]), stat(g["kernel"])) if g else None
    res.append(("≥ 3× the kernel's new UDP flows per second", r, r is not None and r >= 3, "×"))
    g = find_group(groups, 2, "TCP", "handshakes/s (k)")
    r = ratio(stat(g["egret"]), stat(g["kernel"])) if g else None
    name = "≥ 2× the kernel's TCP handshakes per second"
    fr = ratio(stat(g["floor"]), stat(g["kernel"])) if g else None
    if fr is not None:
        # What no NAT on this I/O path could beat.
        name += f" (the I/O floor itself: {fr:.2f}× the kernel)"
    res.append((name, r, r is not None and r >= 2, "×"))
    g = find_group(groups, 5, "80% load", "p99 us")
    if g and g["egret"] and g["kernel"] and len(g["egret"]) == len(g["kernel"]):
        # Runs are interleaved: run i of each system shares the box's state.
        worse = sum(e > k for e, k in zip(g["egret"], g["kernel"]))
        r = ratio(stat(g["egret"]), stat(g["kernel"]))
        res.append((f"p99 at 80% load at or below the kernel's in every run ({worse} of {len(g['egret'])} above)", r, worse == 0, "×"))
    else:
        res.append(("p99 at 80% load at or below the kernel's in every run", None, False, "×"))
    return res


def fmt_target(r, unit):
    return f"{100 * r:.0f}%" if unit == "%" else f"{r:.2f}×"


def target_16_line(name, r, ok, unit, sep=" — "):
    """One of issue 16's targets as a line: met / MISSED / not measured."""
    verdict = "met" if ok else "MISSED" if r is not None else "not measured"
    return f"{verdict}: {name}" + (f"{sep}{fmt_target(r, unit)}" if r is not None else "")


# The README's headline rows: (scenario, case contains, metric, label).
HEADLINE = [
    (1, "100000 flows", "Mpps", "64 B UDP, 100k flows (Mpps)"),
    (1, "1000000 flows", "Mpps", "64 B UDP, 1M flows (Mpps)"),
    (2, "UDP", "new flows/s (k)", "new UDP flows/s (k)"),
    (2, "TCP", "handshakes/s (k)", "TCP handshakes/s (k)"),
    (3, "concurrent sessions", "sessions held", "concurrent sessions, none evicted"),
    (4, "port-reuse", "flows translated of 1200k", "flows translated of 1.2M, /28 port reuse vs one address"),
    (5, "idle", "p99 us", "round trip p99, idle (µs)"),
    (5, "80% load", "p50 us", "round trip p50 at 80% load (µs)"),
    (5, "80% load", "p99 us", "round trip p99 at 80% load (µs)"),
]
README_BEGIN = "<!-- bench/report.py --readme: begin -->"
README_END = "<!-- bench/report.py --readme: end -->"


def readme_block(rows, t16, args):
    out = [README_BEGIN, "", f"`{args.command}`, {args.machine}; medians of interleaved runs, written by `bench/report.py --readme`:", ""]
    out.append("| | Egret | kernel | Egret ÷ kernel | I/O floor (no NAT) |")
    out.append("|---|---|---|---|---|")
    for sc, part, metric, label in HEADLINE:
        row = next((r for r in rows if r["scenario"] == sc and part in r["case"] and r["metric"].startswith(metric)), None)
        if not row:
            continue
        e = fmt(row["egret"][0]) if row["egret"] else "–"
        k = fmt(row["kernel"][0]) if row["kernel"] and row["system2"] == "kernel" else "–"
        ra = f"{row['ratio']:.2f}×" if row["ratio"] is not None else "–"
        floor = row.get("floor")
        fl = f"{fmt(floor[0])} (Egret {100 * row['egret'][0] / floor[0]:.0f}%)" if floor and row["egret"] else ""
        out.append(f"| {label} | {e} | {k} | {ra} | {fl} |")
    out.append("")
    for t in t16:
        out.append(f"- {target_16_line(*t)}")
    out += ["", README_END]
    return "\n".join(out)


def write_readme(path, block):
    text = open(path).read()
    a, b = text.find(README_BEGIN), text.find(README_END)
    if a < 0 or b < a:
        raise SystemExit(f"{path}: no {README_BEGIN} ... {README_END} block to replace")
    open(path, "w").write(text[:a] + block + text[b + len(README_END):])


def text_table(rows):
    lines = []
    hdr = f"{'scenario / case':58} {'metric':24} {'Egret med (min–max)':28} {'kernel med (min–max)':28} {'E/k':>6} {'cont%':>5}"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    last = None
    for r in rows:
        if r["scenario"] != last:
            lines.append(f"{r['scenario']}. {SCENARIOS.get(r['scenario'], '')}")
            last = r["scenario"]
        k = cell(r["kernel"]) + (" [ceiling]" if r["system2"] == "ceiling" and r["kernel"] else "")
        ra = f"{r['ratio']:.2f}" if r["ratio"] is not None else "–"
        cont = f"{r['contention']:.0f}" if r["contention"] is not None else "–"
        lines.append(f"   {r['case'][:55]:55} {r['metric'][:24]:24} {cell(r['egret'])[:28]:28} {k[:28]:28} {ra:>6} {cont:>5}")
    return "\n".join(lines)


def markdown(rows, tg, t16, args, runs):
    md = ["# Egret load benchmark: latest results", ""]
    if args.machine:
        md.append(f"Machine: {args.machine}. veth, copy-mode AF_XDP, one gateway core.")
    if args.command:
        md.append(f"Command: `{args.command}`" + (f" ({int(args.elapsed) // 60} min {int(args.elapsed) % 60} s)" if args.elapsed else ""))
    md.append(f"Runs per figure: {runs}, interleaved Egret / kernel; medians with the spread (min–max).")
    md.append("`cont%` is the worst CPU contention (PSI: share of the window in which a task waited for a CPU) seen")
    md.append("in that row's runs; above ~10% other work was running on the box and the figures are noisy.")
    md.append("")
    md.append("| # | case | metric | Egret | kernel (nftables + conntrack) | Egret ÷ kernel | cont% | notes |")
    md.append("|---|---|---|---|---|---|---|---|")
    for r in rows:
        k = cell(r["kernel"])
        if r["system2"] == "ceiling" and r["kernel"]:
            k = f"{k} (XDP_DROP, no gateway)"
        ra = f"{r['ratio']:.2f}×" if r["ratio"] is not None else "–"
        cont = f"{r['contention']:.0f}" if r["contention"] is not None else "–"
        md.append(f"| {r['scenario']} | {r['case']} | {r['metric']} | {cell(r['egret'])} | {k} | {ra} | {cont} | {r['note']} |")
    md.append("")
    md.append("## Targets (issue 6)")
    md.append("")
    for name, r, ok in tg:
        if r is None:
            md.append(f"- not measured: {name}")
        else:
            md.append(f"- {'met' if ok else 'MISSED'}: {name} — {r:.2f}×")
    md.append("")
    md.append("## Targets (issue 16)")
    md.append("")
    for t in t16:
        md.append(f"- {target_16_line(*t)}")
    md.append("")
    md.append("![chart](latest.svg)" if args.svg and args.svg.endswith("latest.svg") else f"![chart]({args.svg.rsplit('/', 1)[-1]})" if args.svg else "")
    return "\n".join(md) + "\n"


# ------------------------------------------------------------------- SVG
EGRET = "#2b7bb9"
KERNEL = "#d9822b"
CEIL = "#888888"


def compact(v):
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.2g}M" if a < 1e7 else f"{v / 1e6:.0f}M"
    if a >= 1e3:
        return f"{v / 1e3:.3g}k"
    return fmt(v)


def panel(x0, y0, w, h, title, groups, unit, line=None):
    """One bar chart: groups = [(label, egret_stat, kernel_stat)]; `line`
    (label, value) draws a dashed reference line."""
    s = [f'<g transform="translate({x0},{y0})">']
    s.append(f'<text x="{w / 2}" y="14" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>')
    top, bottom, left = 26, 40, 52
    ph = h - top - bottom
    pw = w - left - 8
    vals = [v for _, e, k in groups for st in (e, k) if st for v in (st[0], st[2])]
    if line:
        vals.append(line[1])
    vmax = max(vals) if vals else 1
    vmax = vmax * 1.1 if vmax > 0 else 1
    s.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>')
    s.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>')
    for i in range(5):
        v = vmax * i / 4
        y = top + ph - ph * i / 4
        s.append(f'<text x="{left - 4}" y="{y + 4}" text-anchor="end" font-size="9">{escape(compact(v))}</text>')
        if i:
            s.append(f'<line x1="{left}" y1="{y}" x2="{left + pw}" y2="{y}" stroke="#ddd"/>')
    s.append(f'<text x="10" y="{top + ph / 2}" font-size="9" transform="rotate(-90 10 {top + ph / 2})" text-anchor="middle">{escape(unit)}</text>')
    if line:
        y = top + ph - ph * line[1] / vmax
        s.append(f'<line x1="{left}" y1="{y}" x2="{left + pw}" y2="{y}" stroke="{CEIL}" stroke-dasharray="5,3"/>')
        s.append(f'<text x="{left + pw - 2}" y="{y - 3}" text-anchor="end" font-size="9" fill="#555">{escape(line[0])}</text>')
    n = max(1, len(groups))
    gw = pw / n
    bw = min(28, gw / 3)
    for i, (label, e, k) in enumerate(groups):
        cx = left + gw * i + gw / 2
        kcolor = CEIL if label.startswith("XDP_DROP") else KERNEL
        for j, (st, color) in enumerate(((e, EGRET), (k, kcolor))):
            if not st:
                continue
            bx = cx - bw + j * bw
            bh = ph * st[0] / vmax
            s.append(f'<rect x="{bx + 1}" y="{top + ph - bh}" width="{bw - 2}" height="{bh}" fill="{color}"/>')
            if st[3] > 1:
                ylo, yhi = top + ph - ph * st[1] / vmax, top + ph - ph * st[2] / vmax
                mx = bx + bw / 2
                s.append(f'<line x1="{mx}" y1="{ylo}" x2="{mx}" y2="{yhi}" stroke="#000" stroke-width="1"/>')
                s.append(f'<line x1="{mx - 3}" y1="{yhi}" x2="{mx + 3}" y2="{yhi}" stroke="#000"/>')
                s.append(f'<line x1="{mx - 3}" y1="{ylo}" x2="{mx + 3}" y2="{ylo}" stroke="#000"/>')
            s.append(f'<text x="{bx + bw / 2}" y="{top + ph - bh - 3}" text-anchor="middle" font-size="8">{escape(fmt(st[0]))}</text>')
        for li, part in enumerate(label.split("\n")):
            s.append(f'<text x="{cx}" y="{top + ph + 13 + 11 * li}" text-anchor="middle" font-size="9">{escape(part)}</text>')
    s.append("</g>")
    return "\n".join(s)


def svg(groups_by_key, path):
    def pick(sc, metric, case_filter=None, label=None):
        out = []
        for (s, case, m), g in groups_by_key.items():
            if s == sc and m == metric and (case_filter is None or case_filter(case)):
                e = stat(g["egret"])
                k = stat(g["kernel"]) or stat(g["ceiling"])
                out.append(((label or (lambda c: c))(case), e, k))
        return out

    short = lambda c: c.replace(" flows", "\nflows").replace("000000 ", "M ").replace("000 ", "k ")
    ceil_stat = None
    for (s_, case, m), g in groups_by_key.items():
        if s_ == 6 and g["ceiling"]:
            ceil_stat = stat(g["ceiling"])
    panels = [
        ("1. Throughput (Mpps)", pick(1, "Mpps", label=lambda c: short(c.replace("1000000", "1M").replace("100000", "100k").replace("1000 ", "1k ")).replace("\nflows", " flows")), "Mpps"),
        ("2. New connections (k/s)", pick(2, "new flows/s (k)", label=lambda c: "UDP new flows") + pick(2, "handshakes/s (k)", label=lambda c: "TCP handshakes"), "thousands / s"),
        ("3. Concurrent sessions held", pick(3, "sessions held", label=lambda c: "sessions"), "sessions"),
        ("3. Memory per session (B)", pick(3, "bytes", label=lambda c: "bytes"), "bytes"),
    ]
    pool = []
    for (s, case, m), g in groups_by_key.items():
        if s == 4:
            lab = case.replace("/28 pool, ", "/28 ").replace("one address, masquerade", "kernel\n1 address").replace("endpoint-independent", "EIM").replace("port-reuse", "port reuse")
            pool.append((lab, stat(g["egret"]), stat(g["kernel"])))
            pool_metric = m
    if pool:
        panels.append((f"4. Port pool: {pool_metric}", pool, "flows"))
    lat = []
    for (s, case, m), g in groups_by_key.items():
        if s == 5:
            lat.append((case.replace("round trip, ", "") + "\n" + m.replace(" us", ""), stat(g["egret"]), stat(g["kernel"])))
    if lat:
        panels.append(("5. Round trip (µs)", lat, "µs"))
    ceil = pick(6, "Mpps", label=lambda c: "XDP_DROP\nceiling")
    if ceil:
        panels.append(("6. Ceiling (Mpps)", ceil, "Mpps"))
    cols, pw, ph = 2, 460, 240
    rows = (len(panels) + cols - 1) // cols
    W, H = cols * pw + 20, rows * ph + 60
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">']
    s.append(f'<rect width="{W}" height="{H}" fill="white"/>')
    s.append(f'<text x="12" y="22" font-size="15" font-weight="bold">Egret vs Linux kernel (nftables masquerade + conntrack), one gateway core, veth</text>')
    s.append(f'<rect x="12" y="32" width="12" height="10" fill="{EGRET}"/><text x="28" y="41" font-size="11">Egret</text>')
    s.append(f'<rect x="80" y="32" width="12" height="10" fill="{KERNEL}"/><text x="96" y="41" font-size="11">kernel</text>')
    s.append(f'<rect x="150" y="32" width="12" height="10" fill="{CEIL}"/><text x="166" y="41" font-size="11">XDP_DROP ceiling</text>')
    s.append('<text x="290" y="41" font-size="11">bars: median; whiskers: min–max over the interleaved runs</text>')
    for i, (title, groups, unit) in enumerate(panels):
        x0 = 10 + (i % cols) * pw
        y0 = 50 + (i // cols) * ph
        if title.startswith("1.") and ceil_stat:
            title = f"1. Throughput (Mpps; the box's ceiling: {fmt(ceil_stat[0])})"
        s.append(panel(x0, y0, pw - 10, ph - 10, title, groups, unit))
    s.append("</svg>")
    open(path, "w").write("\n".join(s) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--md")
    ap.add_argument("--svg")
    ap.add_argument("--command", default="")
    ap.add_argument("--machine", default="")
    ap.add_argument("--elapsed", type=float, default=0)
    ap.add_argument("--readme", help="replace the headline block of this README with the run's")
    args = ap.parse_args()
    raw, groups = load(args.results)
    rows = table(groups)
    runs = max((len(g["egret"]) for g in groups.values()), default=0)
    tg, t16 = targets(groups), targets_16(groups)
    print(text_table(rows))
    print()
    for name, r, ok in tg:
        if r is None:
            print(f"target not measured: {name}")
        else:
            print(f"target {'met' if ok else 'MISSED'}: {name}: {r:.2f}x")
    for t in t16:
        print(f"target {target_16_line(*t, sep=': ')}")
    if args.readme:
        write_readme(args.readme, readme_block(rows, t16, args))
    if args.svg:
        svg(groups, args.svg)
    if args.md:
        open(args.md, "w").write(markdown(rows, tg, t16, args, runs))


if __name__ == "__main__":
    main()
