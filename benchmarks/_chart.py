"""The benchmark chart (``latest.png``): what ``run.py`` measured, drawn so that it reads alone.

Layout, top to bottom:

- **the headline panel**: memoh-trio against Memoh's own Go migrator, both into Memoh's Go
  server, one group of bars per scenario, as speed relative to the Go migrator (1.0x: as fast;
  the figure after each bar is its median time). ``cp -r`` and the raw TCP copy are reference
  marks (what the disk and the loopback allow), never bars: where they lie beyond the bars they
  are written at the right edge instead of stretching the scale. Each scenario's target (how much
  faster the memoh-trio CLI should be) is a red tick;
- **one panel per scenario**: every other contender's throughput (MB/s), ``cp -r`` and raw TCP
  again as reference lines.

Every bar says whether its time is the **whole process** (program or interpreter start included:
what an operator waits for; hatched) or **in process** (the library's connect + copy + rename,
timed inside the client). One legend explains colours (which server), hatching and the marks.

The data comes from a run's cells (:func:`run.chart_data`) or from a published report read back
(:func:`read_report`), so the committed chart can be redrawn without rerunning anything:
``python benchmarks/run.py --replot benchmarks/results/latest.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

#: The headline's contenders, in drawing order; the first is the base every ratio is taken to.
HEADLINE: tuple[str, ...] = ("go-seed", "go-seed+sync", "cli@go", "memoh@go")
#: What each headline contender is, in the chart's words.
HEADLINE_NAMES = {
    "go-seed": "Memoh's Go migrator",
    "go-seed+sync": "Memoh's Go migrator, then sync",
    "cli@go": "memoh-trio CLI",
    "memoh@go": "memoh-trio library",
}
#: Reference marks, not bars: how fast a plain local copy and a bare socket go.
REFERENCES = {"cp": "cp -r (local copy, no network)", "raw-tcp": "raw TCP copy (no gRPC)"}
_REF_STYLE: dict[str, Literal["--", ":"]] = {"cp": "--", "raw-tcp": ":"}
_COLOURS = {"memoh": "#1f77b4", "grpcio": "#ff7f0e", "go": "#9467bd", "raw": "#2ca02c",
            "none": "#7f7f7f"}
_SERVER_NAMES = {"memoh": "memoh-trio's server", "grpcio": "a grpcio server",
                 "go": "Memoh's Go server", "raw": "a raw TCP receiver", "none": "no server"}
_LABEL_BOX = {"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5}
WHOLE = "whole process"
IN_PROCESS = "in process"


@dataclass(frozen=True)
class Series:
    """One contender as the chart names and colours it."""

    key: str
    label: str  # as in the report's tables, e.g. "memoh-trio (defaults)"
    server: str  # kind: "memoh" | "grpcio" | "go" | "raw" | "none"
    server_label: str  # as in the report's tables, e.g. "Memoh Go"
    whole_process: bool

    @property
    def mode(self) -> str:
        return WHOLE if self.whole_process else IN_PROCESS


@dataclass(frozen=True)
class Point:
    """One contender's median on one scenario, or why there is none."""

    seconds: float | None = None
    mbps: float | None = None
    files_per_s: float | None = None
    why: str = ""  # "skipped", "failed", "not run" when there are no figures


@dataclass
class ChartData:
    smoke: bool
    series: list[Series]
    titles: dict[str, str] = field(default_factory=dict)  # scenario key -> title
    points: dict[str, dict[str, Point]] = field(default_factory=dict)

    def point(self, scenario: str, key: str) -> Point | None:
        found = self.points.get(scenario, {}).get(key)
        return found if found is not None and found.seconds else None


# ----------------------------------------------------------------------------------------------
# Reading a published report back


_SECTION = re.compile(r"^## \((\w+)\) (.+): [\d,]+ files?, ")


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def read_report(markdown: str, series: Sequence[Series]) -> ChartData:
    """The chart's data from a report ``run.py`` wrote (its per-scenario tables)."""
    by_row = {(s.label, s.server_label): s.key for s in series}
    data = ChartData(smoke="(smoke run" in markdown.split("\n", 1)[0], series=list(series))
    scenario: str | None = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            m = _SECTION.match(line)
            scenario = m.group(1) if m else None
            if m:
                data.titles[m.group(1)] = m.group(2)
                data.points[m.group(1)] = {}
            continue
        if scenario is None or not line.startswith("| ") or line.startswith("| contender"):
            continue
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        label = re.sub(r" \(\d+ failed\)$", "", cols[0])
        key = by_row.get((label, cols[1]))
        if key is None:
            continue
        mbps = _number(cols[2])
        if mbps is None:
            why = "skipped" if cols[2].startswith("skipped") else "failed"
            data.points[scenario][key] = Point(why=why)
            continue
        data.points[scenario][key] = Point(seconds=_number(cols[4]), mbps=mbps,
                                           files_per_s=_number(cols[3]))
    return data


# ----------------------------------------------------------------------------------------------
# Drawing


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def _ref_text(name: str, value: float, unit: str) -> str:
    short = name.split(" (")[0]
    return f"{short} {value:,.1f}{unit}"


def headline_ratios(data: ChartData, scenario: str) -> dict[str, float]:
    """Speed relative to Memoh's Go migrator (its time / the contender's) for the headline
    contenders and the references that ran; empty where the Go migrator did not run."""
    base = data.point(scenario, HEADLINE[0])
    if base is None or base.seconds is None:
        return {}
    out: dict[str, float] = {}
    for key in (*HEADLINE, *REFERENCES):
        p = data.point(scenario, key)
        if p is not None and p.seconds:
            out[key] = base.seconds / p.seconds
    return out


def _references(ax: Any, y0: float, y1: float, values: Mapping[str, float], limit: float,
                unit: str) -> list[str]:
    """Draw each reference inside the axis as a line from y0 to y1; return the text of those
    beyond ``limit`` (written at the edge by the caller)."""
    beyond: list[str] = []
    for i, (key, value) in enumerate(values.items()):
        if value <= limit:
            ax.plot([value, value], [y0, y1], linestyle=_REF_STYLE[key], color="#444444",
                    linewidth=1.2, zorder=1)
            # cp -r above the line's top, raw TCP below its bottom: they never overlap.
            ax.text(value, y1 if i == 0 else y0, " " + REFERENCES[key].split(" (")[0],
                    fontsize=6.5, color="#444444", va="bottom" if i == 0 else "top",
                    ha="left")
        else:
            beyond.append(_ref_text(REFERENCES[key], value, unit))
    return beyond


def _headline_panel(ax: Any, data: ChartData, goals: Mapping[str, float]) -> None:
    by_key = {s.key: s for s in data.series}
    scenarios = [s for s in data.titles if headline_ratios(data, s)]
    ax.set_title("memoh-trio against Memoh's Go migrator, both into Memoh's Go server: "
                 "speed relative to the Go migrator (right of 1.0x: memoh-trio is faster)",
                 fontsize=10, loc="left")
    if not scenarios:
        ax.text(0.5, 0.5, "Memoh's Go migrator did not run (its binaries are not built: "
                "../shared/memoh-go/build.sh --install)", ha="center", va="center",
                fontsize=9, transform=ax.transAxes)
        ax.set_axis_off()
        return
    step = len(HEADLINE) + 1.2
    limit = max([r for s in scenarios for k, r in headline_ratios(data, s).items()
                 if k in HEADLINE] + [goals.get(s, 0.0) for s in scenarios] + [1.0]) * 1.35
    ticks: list[float] = []
    tick_labels: list[str] = []
    for i, s in enumerate(scenarios):
        ratios = headline_ratios(data, s)
        top = -i * step
        for j, key in enumerate(HEADLINE):
            y = top - j
            series = by_key.get(key)
            if series is None:
                continue
            ticks.append(y)
            tick_labels.append(f"{HEADLINE_NAMES[key]} ({series.mode})")
            p = data.points.get(s, {}).get(key)
            if key not in ratios:
                ax.text(0.02, y, p.why if p is not None and p.why else "not run",
                        va="center", fontsize=7, color="#666666")
                continue
            ax.barh(y, ratios[key], color=_COLOURS[series.server],
                    hatch="///" if series.whole_process else None, edgecolor="white",
                    height=0.8)
            seconds = data.points[s][key].seconds or 0.0
            ax.text(ratios[key], y, f" {ratios[key]:.2f}x ({_fmt_s(seconds)})", va="center",
                    fontsize=7, bbox=_LABEL_BOX, zorder=4)
        bottom = top - len(HEADLINE) + 1
        if s in goals:
            ax.plot([goals[s]] * 2, [bottom - 0.45, top + 0.45], color="#d62728", linewidth=2.2,
                    zorder=3)
            ax.text(goals[s], bottom - 0.55, f"target {goals[s]:g}x", color="#d62728",
                    fontsize=6.5, ha="center", va="top")
        refs = {k: ratios[k] for k in REFERENCES if k in ratios}
        beyond = _references(ax, bottom - 0.45, top + 0.45, refs, limit, "x")
        if beyond:
            ax.text(limit, top - 0.2, "off scale: " + ", ".join(beyond) + " ▸", ha="right",
                    va="center", fontsize=6.5, color="#444444")
        ax.text(-0.01, top + 0.75, f"({s}) {data.titles[s]}", fontsize=8.5, weight="bold",
                transform=ax.get_yaxis_transform(), ha="right")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(ticks, tick_labels, fontsize=7.5)
    ax.set_xlim(0, limit)
    ax.set_ylim(-(len(scenarios) - 1) * step - len(HEADLINE) - 0.3, 1.6)
    ax.set_xlabel("speed relative to Memoh's Go migrator (its time / this time; "
                  "the time is the median)", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)


def _scenario_panel(ax: Any, data: ChartData, scenario: str) -> None:
    rows = [s for s in data.series if s.key not in REFERENCES
            and s.key in data.points.get(scenario, {})]
    values = []
    for s in rows:
        p = data.points[scenario][s.key]
        values.append(p.mbps or 0.0)
    limit = max([*values, 1e-9]) * 1.55
    ypos = list(range(len(rows)))[::-1]
    labels = []
    for y, s, v in zip(ypos, rows, values, strict=True):
        p = data.points[scenario][s.key]
        labels.append(f"{s.label} → {s.server_label} ({s.mode})")
        if not p.seconds:
            ax.text(limit * 0.01, y, p.why or "not run", va="center", fontsize=6.5,
                    color="#666666")
            continue
        ax.barh(y, v, color=_COLOURS[s.server], hatch="///" if s.whole_process else None,
                edgecolor="white", height=0.8)
        per_s = p.files_per_s or 0.0
        ax.text(v, y, f" {v:,.1f} MB/s, {per_s:,.{0 if per_s >= 10 else 2}f} files/s",
                va="center", fontsize=6.5, bbox=_LABEL_BOX, zorder=4)
    refs = {k: ref.mbps for k in REFERENCES
            if (ref := data.point(scenario, k)) is not None and ref.mbps}
    beyond = _references(ax, -0.6, len(rows) - 0.4, refs, limit, " MB/s")
    off = "; off scale: " + ", ".join(beyond) + " ▸" if beyond else ""
    ax.set_yticks(ypos, labels, fontsize=6.5)
    ax.set_xlim(0, limit)
    ax.set_ylim(-1.2, len(rows) + 0.2)
    ax.set_title(f"({scenario}) {data.titles[scenario]}", fontsize=9, loc="left")
    ax.set_xlabel("MB/s (median)" + off, fontsize=7)
    ax.tick_params(axis="x", labelsize=7)


def _legend(fig: Any, data: ChartData) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    kinds = [k for k in _COLOURS if any(s.server == k for s in data.series
                                        if s.key not in REFERENCES)]
    handles: list[Any] = [Patch(facecolor=_COLOURS[k], label=f"into {_SERVER_NAMES[k]}")
                          for k in kinds]
    handles += [
        Patch(facecolor="#bbbbbb", hatch="///", edgecolor="white",
              label=f"{WHOLE}: program start to exit, what an operator waits for"),
        Patch(facecolor="#bbbbbb", label=f"{IN_PROCESS}: the library's connect + copy + "
              "rename, interpreter start excluded"),
        *[Line2D([], [], color="#444444", linestyle=_REF_STYLE[k], label=f"reference: {v}")
          for k, v in REFERENCES.items()],
        Line2D([], [], color="#d62728", linewidth=2.2,
               label="target: memoh-trio CLI at least this much faster than Memoh's Go "
               "migrator"),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=2, fontsize=7.5, frameon=False,
               bbox_to_anchor=(0.5, 0.985))


def _notes(ax: Any) -> None:
    ax.set_axis_off()
    ax.text(0, 1, "How to read the panels\n\n"
            "Each panel: one scenario, every contender's median\n"
            "throughput (MB = 10^6 bytes).\n"
            "Label: client → server (how its time was taken).\n"
            "cp -r and the raw TCP copy show what the disk and\n"
            "the loopback allow: reference lines, not contenders.\n"
            "Compare within one run only: the machine is shared.\n"
            "Every figure, with CPU and memory: latest.md.",
            va="top", ha="left", fontsize=8, transform=ax.transAxes)


def build_figure(data: ChartData, goals: Mapping[str, float]) -> Any:
    """The chart as a matplotlib Figure (not saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(data.titles)
    scenario_rows = (len(keys) + 1) // 2
    headline_count = sum(1 for s in keys if headline_ratios(data, s)) or 1
    headline_h = 0.9 + 0.2 * headline_count * (len(HEADLINE) + 1.2)
    panel_h = 0.9 + 0.22 * len([s for s in data.series if s.key not in REFERENCES])
    fig = plt.figure(figsize=(15, 1.6 + headline_h + panel_h * scenario_rows))
    outer = fig.add_gridspec(2, 1, height_ratios=[headline_h, panel_h * scenario_rows],
                             left=0.22, right=0.97, hspace=0.12,
                             top=1 - 1.45 / fig.get_figheight(), bottom=0.03)
    _headline_panel(fig.add_subplot(outer[0]), data, goals)
    grid = outer[1].subgridspec(scenario_rows, 2, hspace=0.5, wspace=0.85)
    for i, key in enumerate(keys):
        _scenario_panel(fig.add_subplot(grid[i // 2, i % 2]), data, key)
    if len(keys) % 2:  # the empty slot: how to read the panels
        _notes(fig.add_subplot(grid[len(keys) // 2, 1]))
    _legend(fig, data)
    fig.suptitle("memoh-trio benchmarks on 127.0.0.1" + (" (smoke run: tiny trees, not a "
                 "measurement)" if data.smoke else "") + "; the tables are in latest.md",
                 fontsize=11, y=0.998)
    return fig


def render(data: ChartData, goals: Mapping[str, float], path: Path) -> None:
    """Draw the chart into ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = build_figure(data, goals)
    fig.savefig(path, dpi=100)
    plt.close(fig)
