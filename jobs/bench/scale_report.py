"""The tables and `key=value` lines of `jobs.bench.scale`, from the runs' result dicts."""

from __future__ import annotations

from jobs.bench import common as bc

HEADLINES = ("driver_cpu_s_per_mrow", "driver_rss_ratio_10x", "two_node_vs_one")


def per_mrow(r: dict) -> float:
    return r["cpu_s"] / (r["rows_in"] / 1e6)


def rows_per_s(r: dict) -> float:
    return r["rows_in"] / r["wall_s"]


def headlines(results: list[dict], side: str) -> dict[str, float]:
    h: dict[str, float] = {}
    local = {(r["size"], r["text"]): r for r in results if r["side"] == side and "size" in r}
    if local:
        texts = {t for _, t in local}  # with and without the text passed through, or one of them
        h["driver_cpu_s_per_mrow"] = max(per_mrow(local[("10N", t)]) for t in texts)
        h["driver_rss_ratio_10x"] = max(local[("10N", t)]["hwm"] / local[("N", t)]["hwm"] for t in texts)
    rps = {r["n_nodes"]: rows_per_s(r) for r in results if r["side"] == side and "n_nodes" in r}
    if len(rps) == 2:
        h["two_node_vs_one"] = rps[2] / rps[1]
    return h


def run_table(results: list[dict]) -> str:
    def mib(n: float) -> str:
        return f"{n / 2**20:.0f}"

    rows = []
    for r in results:
        idle = r.get("idle_cores")
        rows.append([f"{r['side']} {r['label']}", str(r["rows_in"]), f"{r['wall_s']:.1f}",
                     f"{rows_per_s(r):.0f}", f"{r['cpu_s']:.2f}", f"{per_mrow(r):.2f}",
                     f"{r['cpu_s'] / r['wall_s']:.2f}", f"{idle:.3f}" if idle is not None else "-",
                     f"{r['cpu_import_s']:.1f}+{r['cpu_init_s']:.1f}", mib(r["rss_before"]),
                     mib(r["hwm"]), mib(r["hwm"] - r["rss_before"]),
                     str(r["units"]) if r["units"] is not None else "-",
                     f"{100 * r['others']:.0f}%"])
    return bc.table(rows, ["run", "rows", "score s", "rows/s", "drv CPU s", "CPU s/Mrow",
                           "drv cores", "idle cores", "import+init CPU s", "RSS before MiB",
                           "peak MiB", "peak-before", "units", "others' CPU"])


def compare_table(results: list[dict], sides: list[str]) -> str:
    """One row per measure: each side's value and, with both sides, candidate / baseline."""

    def run(side: str, **match) -> dict | None:
        return next((r for r in results if r["side"] == side
                     and all(r.get(k) == v for k, v in match.items())), None)

    def of(value, **match):
        return lambda side: value(r) if (r := run(side, **match)) else None

    def marginal(text: bool):
        def cpu_per_mrow(side: str) -> float | None:
            a, b = run(side, size="N", text=text), run(side, size="10N", text=text)
            if not (a and b):
                return None
            return (b["cpu_s"] - a["cpu_s"]) / ((b["rows_in"] - a["rows_in"]) / 1e6)
        return cpu_per_mrow

    def peak_mib(r: dict) -> float:
        return r["hwm"] / 2**20

    measures = []
    for size in ("N", "10N"):
        for text in (False, True):
            tag, match = f"{size} {'text' if text else 'no text'}", {"size": size, "text": text}
            measures += [(f"driver CPU s/Mrow, {tag}", of(per_mrow, **match), "{:.2f}"),
                         (f"driver peak RSS MiB, {tag}", of(peak_mib, **match), "{:.0f}"),
                         (f"rows/s, {tag}", of(rows_per_s, **match), "{:.0f}")]
    for text in (False, True):
        measures.append((f"driver CPU s/Mrow, (10N-N) / 9N, {'text' if text else 'no text'}",
                         marginal(text), "{:.2f}"))
    for k in (1, 2):
        measures += [(f"rows/s, {k}-node cluster", of(rows_per_s, n_nodes=k), "{:.0f}"),
                     (f"driver CPU s/Mrow, {k}-node cluster", of(per_mrow, n_nodes=k), "{:.2f}")]
    heads = {s: headlines(results, s) for s in sides}
    measures += [(key, lambda side, key=key: heads[side].get(key), "{:.3f}") for key in HEADLINES]
    rows = []
    for name, value, fmt in measures:
        vals = [value(s) for s in sides]
        if all(v is None for v in vals):
            continue
        row = [name] + [fmt.format(v) if v is not None else "-" for v in vals]
        if len(sides) == 2:
            row.append(f"{vals[1] / vals[0]:.2f}" if vals[0] and vals[1] is not None else "-")
        rows.append(row)
    return bc.table(rows, ["measure", *sides, *(["cand/base"] if len(sides) == 2 else [])])


NOTES = """\
score s: wall time of score() alone. drv cores: driver CPU s / score s. idle cores: the same
while the connected driver sleeps before score(). import+init CPU s: the child's CPU importing
bertml, then in init_ray (both outside drv CPU). peak: the child's VmHWM during score().
others' CPU: share of the cores used by processes outside this run while it ran."""


def print_report(results: list[dict], sides: list[str], runner) -> None:
    """Every run, the machine before each, the children's warnings, baseline vs candidate."""
    print()
    print(run_table(results))
    print(NOTES)
    if not all(r["reset_ok"] for r in results):
        print("NOTE: VmHWM could not be reset before score(): 'peak' includes the imports'")
    print()
    print(bc.table(runner.quiet_log, ["run", "machine before it"]))
    if runner.warnings:
        print()
        head = "warning/error lines in the children's logs (digits: #, hex ids: <id>)"
        top = [[w, str(c)] for w, c in runner.warnings.most_common(8)]
        print(bc.table(top, [head, "count"]))
    print()
    print(compare_table(results, sides))
    worst = max((r["others"] for r in results), default=0.0)
    if worst > 0.10:
        print(f"WARNING: other processes used up to {worst:.0%} of the cores during a run; "
              "wall times and rows/s are skewed: rerun on a quiet machine")


def print_headlines(results: list[dict]) -> None:
    """The `key=value` lines: the candidate's, the baseline's (prefixed), and their ratio."""
    cand = headlines(results, "candidate")
    base = headlines(results, "baseline")
    for key in HEADLINES:
        if key in cand:
            print(f"{key}={cand[key]:.3f}")
    for key in HEADLINES:
        if key in base:
            print(f"baseline_{key}={base[key]:.3f}")
    if "driver_cpu_s_per_mrow" in cand and base.get("driver_cpu_s_per_mrow"):
        ratio = cand["driver_cpu_s_per_mrow"] / base["driver_cpu_s_per_mrow"]
        print(f"driver_cpu_vs_baseline={ratio:.3f}")
