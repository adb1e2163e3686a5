"""A self-contained HTML report of a portfolio: plots (also written as PNG files) and tables.

The page embeds its images as data URIs and uses no script, so it opens offline anywhere and can be
mailed as one file. It reads only the portfolio directory (and optional switching-session logs), so
it works on the deployment side too.

What it shows: accuracy against parameters, MACs and host latency (every variant labelled by its
round, variants on the same spot sharing one label, the dense model ringed on top); where
``lightning-shifter bench --runner`` or ``device bench`` recorded them, per device and variant the
native runner's latency, switch and reload times and resident memory, as a figure and a table per
device; channels kept per layer; switching sessions. Figures are at most the page's width, so they
are shown unscaled.

Example::

    >>> from lightning_shifter.report import write_report
    >>> write_report("portfolio/", "portfolio/report")  # doctest: +SKIP
    PosixPath('portfolio/report/index.html')

A switching-session log is a list of events, each a dict with ``t`` (seconds since the start),
``variant``, optionally ``precision``, ``reason``, ``switch_us`` (measured switch overhead),
``latency_ms`` (an inference's latency) and ``budget_ms`` (the latency budget in force).
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_shifter.portfolio import Portfolio, Variant, headline

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #1d2330; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } .sub { color: #5a6477; margin-top: 0; }
figure { margin: 1.5rem 0; } figcaption { color: #5a6477; font-size: 0.9rem; }
img { max-width: 100%; border: 1px solid #e3e6ec; border-radius: 6px; }
.scroll { overflow-x: auto; } table { border-collapse: collapse; font-size: 0.8rem; width: 100%; }
th, td { padding: 0.3rem 0.45rem; border-bottom: 1px solid #e3e6ec; text-align: right; white-space: nowrap; }
th { white-space: normal; vertical-align: bottom; }
th { background: #f4f6f9; } td:first-child, th:first-child { text-align: left; }
tr.front td { font-weight: 600; } .note { color: #5a6477; font-size: 0.9rem; }
.headline { border-left: 4px solid #2b6cb0; padding: 0.2rem 1rem; background: #f3f7fc; }
.lead { font-size: 1.05rem; margin: 0.4rem 0; }
"""


def write_report(
    portfolio_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    sessions: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``index.html`` and its PNG figures into ``out_dir`` (default ``<portfolio>/report``).

    Args:
        portfolio_dir: a portfolio directory (its files are verified by size, not re-hashed).
        out_dir: where to write; created if needed.
        sessions: switching-session logs by title (see the module docstring), plotted as timelines.
        notes: sentences shown under the headline (e.g. the original DNNShifter rule on the same masks).

    Returns:
        The path of the HTML page.

    Example::

        >>> import tempfile
        >>> from lightning_shifter.portfolio import Portfolio, Variant
        >>> from lightning_shifter.report import write_report
        >>> portfolio = Portfolio.create(tempfile.mkdtemp(), input_shape=(1, 1, 8, 8))
        >>> for r, (params, acc) in enumerate([(9000, 0.97), (3000, 0.96), (800, 0.91)]):
        ...     portfolio.put_variant(Variant(f"round-{r:02d}", round=r, density=0.5 ** r, params=params,
        ...                                   macs=50 * params, metrics={"val_acc_compacted": acc}))
        >>> session = [{"t": 0.0, "variant": "round-00", "budget_ms": 5.0, "latency_ms": 3.1},
        ...            {"t": 1.0, "variant": "round-02", "budget_ms": 0.5, "latency_ms": 0.4, "switch_us": 2.5}]
        >>> page = write_report(portfolio.root, sessions={"budget drops after 1 s": session})
        >>> page.relative_to(portfolio.root).as_posix()
        'report/index.html'
        >>> sorted(path.name for path in page.parent.iterdir())
        ['index.html', 'session-0.png', 'tradeoff.png']
        >>> "round-02" in page.read_text()
        True
        >>> _ = portfolio.update_variant("round-02", devices={"phone-1": {"fp32": {"p50_ms": 0.9, "switch_us": 0.01,
        ...                                                                     "alone_rss_kb": 9000}}})
        >>> page = write_report(portfolio.root)
        >>> sorted(path.name for path in page.parent.iterdir())
        ['devices.png', 'index.html', 'session-0.png', 'tradeoff.png']
        >>> "<h3>phone-1</h3>" in page.read_text()
        True
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed, also inside threads and CI
    portfolio = Portfolio.open(portfolio_dir, verify="size")
    out = Path(out_dir) if out_dir is not None else portfolio.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    if not len(portfolio):
        raise ValueError(f"{portfolio.root} lists no variants yet: train with the Compaction callback first")

    figures: list[tuple[str, str, str]] = []  # (file name, title, caption)
    figures.append(("tradeoff.png", "Accuracy against size, MACs and latency", _plot_tradeoff(portfolio, out / "tradeoff.png")))
    caption = _plot_devices(portfolio, out / "devices.png")
    if caption:
        figures.append(("devices.png", "Latency, switching and memory on devices", caption))
    caption = _plot_layers(portfolio, out / "layers.png")
    if caption:
        figures.append(("layers.png", "Channels kept per layer and round", caption))
    for index, (title, events) in enumerate((sessions or {}).items()):
        name = f"session-{index}.png"
        figures.append((name, f"Switching session: {title}", _plot_session(events, title, out / name)))

    page = out / "index.html"
    page.write_text(_html(portfolio, figures, out, notes), encoding="utf-8")
    return page


# ----------------------------------------------------------------------------- figures
_DPI = 110
_WIDTH_IN = 10.5  # figures at most this wide are shown unscaled on the page (see _STYLE's max-width)
_DEVICE_METRICS = ("p50_ms", "switch_us", "reload_ms", "alone_rss_kb")


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def _plot_tradeoff(portfolio: Portfolio, path: Path) -> str:
    _save(_tradeoff_figure(portfolio), path)
    return ("Accuracy of each compacted variant against its parameter count, MACs and measured host latency; "
            "labels are pruning rounds (variants that coincide share one), the ring marks the dense model.")


def _tradeoff_figure(portfolio: Portfolio) -> Any:
    import matplotlib.pyplot as plt

    variants = [v for v in portfolio.variants if v.accuracy is not None]
    front = {v.name for v in portfolio.pareto_front()}
    dense = _dense(portfolio)
    latency = {v.name: _host_p50(v) for v in variants}
    panels = [("params", "parameters"), ("macs", "MACs per inference")]
    if any(ms is not None for ms in latency.values()):
        panels.append(("latency", "host latency p50 (ms)"))
    # one panel under the other, at the page's width: shown at full size, labels stay legible
    fig, axes = plt.subplots(len(panels), 1, figsize=(_WIDTH_IN, 3.6 * len(panels) + 0.4), squeeze=False, dpi=_DPI,
                             layout="constrained")
    axes = axes[:, 0]
    scatter = None
    for ax, (key, label) in zip(axes, panels):
        points = [(v, latency[v.name] if key == "latency" else float(getattr(v, key))) for v in variants]
        points = [(v, x) for v, x in points if x is not None]
        if not points:
            continue
        xs = [x for _, x in points]
        ys = [100 * v.accuracy for v, _ in points]
        scatter = ax.scatter(xs, ys, c=[v.density for v, _ in points], cmap="viridis", vmin=0, vmax=1, s=46,
                             zorder=3, edgecolors="white")
        on_front = sorted((x, 100 * v.accuracy) for v, x in points if v.name in front)
        if len(on_front) > 1:
            ax.step([p[0] for p in on_front], [p[1] for p in on_front], where="post", color="#d9480f", lw=1.4,
                    zorder=2, label="Pareto front (params, MACs)")
        for v, x in points:
            if v is dense:  # a ring on top: visible even where a smaller variant lies on the same spot
                ax.scatter([x], [100 * v.accuracy], s=190, facecolors="none", edgecolors="#c2255c", linewidths=1.8,
                           zorder=5, label=f"dense model ({v.name})")
        if max(xs) / max(min(xs), 1e-12) > 20:
            ax.set_xscale("log")
        ax.margins(x=0.08, y=0.12)
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)  # the dense model often sits at the lower right
    if scatter is not None:
        fig.colorbar(scatter, ax=axes.tolist(), label="density (nonzero weights)", shrink=0.6, aspect=40)
    fig.suptitle("Each point is a variant, labelled by its pruning round", fontsize=10)
    fig.canvas.draw()  # fixes the layout: labels are placed in the final pixel positions
    for ax, (key, _) in zip(axes, panels):
        points = [(latency[v.name] if key == "latency" else float(getattr(v, key)), 100 * v.accuracy, v.round)
                  for v in variants]
        _label_points(ax, [p for p in points if p[0] is not None])
    return fig


def _label_points(ax: Any, points: Sequence[tuple[float, float, int]], fontsize: float = 8) -> None:
    """Label each point with its round so that no two labels overlap: points within a marker of each other
    share one label ("0, 4"); each label takes the first spot on rings around its point that is free of
    other labels, markers and the legend, inside the axes (a thin line leads to a distant one)."""
    import matplotlib.text as mtext
    import matplotlib.transforms as mtransforms

    renderer = ax.figure.canvas.get_renderer()
    pixels = [ax.transData.transform((x, y)) for x, y, _ in points]
    groups: list[list[int]] = []  # points within a marker of a group's first point
    for i, spot in enumerate(pixels):
        near = next((g for g in groups if math.dist(spot, pixels[g[0]]) < 8), None)
        if near is None:
            groups.append([i])
        else:
            near.append(i)
    area = ax.get_window_extent(renderer)
    taken = [mtransforms.Bbox.from_bounds(px - 5, py - 5, 10, 10) for px, py in pixels]
    legend = ax.get_legend()
    if legend is not None:
        taken.append(legend.get_window_extent(renderer))
    for group in sorted(groups, key=lambda g: (pixels[g[0]][0], pixels[g[0]][1])):
        text = _rounds_text(sorted({points[i][2] for i in group}))
        anchor = points[group[0]][:2]
        for dx, dy in _LABEL_SPOTS:
            far = math.hypot(dx, dy) > 14
            label = ax.annotate(
                text, anchor, xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, zorder=6,
                ha="left" if dx > 2 else "right" if dx < -2 else "center",
                va="bottom" if dy > 2 else "top" if dy < -2 else "center",
                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "#868e96", "shrinkA": 0, "shrinkB": 4} if far else None,
            )
            label.set_in_layout(False)
            label.update_positions(renderer)
            box = mtext.Text.get_window_extent(label, renderer).expanded(1.08, 1.15)  # the text, not its line
            inside = area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1
            if inside and not any(box.overlaps(other) for other in taken):
                taken.append(box)
                break
            label.remove()
        else:  # no free spot at all (hundreds of variants on one spot): still name them
            ax.annotate(text, anchor, xytext=(4, 4), textcoords="offset points", fontsize=fontsize,
                        zorder=6).set_in_layout(False)


# offsets in points around a point: a ring of 12 directions at growing distances
_LABEL_SPOTS = [(radius * math.cos(math.radians(angle)), radius * math.sin(math.radians(angle)))
                for radius in (6, 11, 17, 24, 32, 42) for angle in (45, -45, 135, -135, 90, -90, 0, 180, 20, -20,
                                                                   160, -160)]


def _rounds_text(rounds: Sequence[int]) -> str:
    """``[0, 3, 4, 5, 9]`` -> ``"0, 3-5, 9"``."""
    parts: list[str] = []
    for r in rounds:
        if parts and parts[-1].split("-")[-1] == str(r - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{r}"
        else:
            parts.append(str(r))
    return ", ".join(parts)


def _plot_devices(portfolio: Portfolio, path: Path) -> str | None:
    figure = _devices_figure(portfolio)
    if figure is None:
        return None
    _save(figure, path)
    devices = sorted({device for device, _ in _device_series(portfolio)})
    return (f"Measured with the native runner on {', '.join(devices)} (and the host's ExecuTorch Python runtime): "
            "median latency, the cost of switching to a preloaded variant against reloading it from storage, and "
            "the runner's resident memory holding that variant alone (lines: the whole portfolio loaded at once).")


def _device_series(portfolio: Portfolio) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """(device id, precision) -> variant name -> the device figures the manifest holds for it."""
    series: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for v in portfolio.variants:
        for device, entry in (v.devices.items() if isinstance(v.devices, dict) else ()):
            for precision, measured in (entry.items() if isinstance(entry, dict) else ()):
                if precision == "facts" or not isinstance(measured, dict):
                    continue
                numbers = {k: _finite(measured.get(k)) for k in _DEVICE_METRICS}
                if any(value is not None for value in numbers.values()):
                    series.setdefault((str(device), str(precision)), {})[v.name] = numbers
    return series


def _devices_figure(portfolio: Portfolio) -> Any | None:
    import matplotlib.pyplot as plt

    series = _device_series(portfolio)
    if not series:
        return None
    names = portfolio.names
    position = {name: i for i, name in enumerate(names)}
    devices = sorted({device for device, _ in series})
    colors = {device: plt.get_cmap("tab10")(i % 10) for i, device in enumerate(devices)}
    styles = {"fp32": ("o", "-"), "int8": ("s", "--")}
    fig, (latency, switch, memory) = plt.subplots(3, 1, figsize=(_WIDTH_IN, 10.5), sharex=True, dpi=_DPI,
                                                  layout="constrained")
    for (device, precision), by_name in sorted(series.items()):
        marker, line = styles.get(precision, ("^", ":"))
        kw = {"color": colors[device], "marker": marker, "ls": line, "ms": 5, "lw": 1.2}
        label = f"{device} {precision}".replace("$", r"\$")  # a device id is text, not mathtext

        def plot(ax: Any, key: str, scale: float = 1.0, **extra: Any) -> None:
            xs = [position[n] for n, numbers in by_name.items() if numbers[key] is not None]
            ys = [numbers[key] * scale for numbers in by_name.values() if numbers[key] is not None]
            if xs:
                ax.plot(xs, ys, **{**kw, **extra})

        plot(latency, "p50_ms", label=label)
        plot(switch, "switch_us", label=f"{label}: switch")
        plot(switch, "reload_ms", 1e3, label=f"{label}: reload", marker="x", ls=":", alpha=0.8)
        plot(memory, "alone_rss_kb", 1 / 1024, label=label)
        summary = _portfolio_memory(portfolio, device, precision)
        if summary is not None and summary.get("portfolio_rss_kb") is not None:
            memory.axhline(summary["portfolio_rss_kb"] / 1024, color=colors[device], ls=line, lw=0.9, alpha=0.6,
                           label=f"{label}: whole portfolio")
    host = [(position[v.name], _host_p50(v)) for v in portfolio.variants if _host_p50(v) is not None]
    if host:
        latency.plot([x for x, _ in host], [y for _, y in host], color="#495057", marker="d", ls="-.", lw=1, ms=4,
                     label="host ExecuTorch (Python) fp32")
    for ax, label in ((latency, "latency p50 (ms)"), (switch, "switch / reload (us)"),
                      (memory, "resident memory (MB)")):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    latency.set_yscale("log")
    switch.set_yscale("log")
    memory.set_xticks(range(len(names)), names, rotation=90 if len(names) > 8 else 0, fontsize=8)
    memory.set_xlim(-0.6, len(names) - 0.4)
    fig.suptitle("Native runner on each device, per variant", fontsize=10)
    return fig


def _plot_layers(portfolio: Portfolio, path: Path) -> str | None:
    figure = _layers_figure(portfolio)
    if figure is None:
        return None
    _save(figure, path)
    return "Output channels (features) each convolution and linear layer keeps after exact compaction, per round."


def _layers_figure(portfolio: Portfolio) -> Any | None:
    import matplotlib.pyplot as plt
    import numpy as np

    variants = [v for v in portfolio.variants if v.compaction.get("layers")]
    if not variants:
        return None
    names: list[str] = []
    for v in variants:
        for layer in v.compaction["layers"]:
            if layer["kind"] != "BatchNorm2d" and layer["name"] not in names and not layer["kind"].startswith("BatchNorm"):
                names.append(layer["name"])
    kept = np.full((len(names), len(variants)), np.nan)
    for j, v in enumerate(variants):
        for layer in v.compaction["layers"]:
            if layer["name"] in names and layer["channels_before"]:
                kept[names.index(layer["name"]), j] = layer["channels_after"] / layer["channels_before"]
    fig, ax = plt.subplots(figsize=(min(_WIDTH_IN, 0.5 * len(variants) + 3), max(3.0, 0.22 * len(names) + 1.5)),
                           dpi=_DPI, layout="constrained")
    image = ax.imshow(kept, aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(variants)), [f"{v.round}\n{v.density:.2g}" for v in variants], fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("round / density")
    fig.colorbar(image, ax=ax, label="fraction of output channels kept")
    return fig


def _plot_session(events: Sequence[Mapping[str, Any]], title: str, path: Path) -> str:
    import matplotlib.pyplot as plt

    times = [float(e["t"]) for e in events]
    order = sorted({e["variant"] for e in events})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(_WIDTH_IN, max(5.0, 3.5 + 0.16 * len(order))), sharex=True, dpi=_DPI,
                                      gridspec_kw={"height_ratios": [3, 2]}, layout="constrained")
    latency = [(t, e["latency_ms"]) for t, e in zip(times, events) if e.get("latency_ms") is not None]
    if latency:
        top.plot([t for t, _ in latency], [ms for _, ms in latency], ".", ms=3, color="#1971c2", label="inference latency")
    budget = [(t, e["budget_ms"]) for t, e in zip(times, events) if e.get("budget_ms") is not None]
    if budget:
        top.step([t for t, _ in budget], [b for _, b in budget], where="post", color="#d9480f", label="latency budget")
    if latency and budget:
        # a few millisecond-long scheduler hiccups would squash the budget line: scale to the budgets
        ceiling = 2.0 * max(b for _, b in budget)
        above = sum(ms > ceiling for _, ms in latency)
        if above:
            top.set_ylim(0, ceiling)
            top.text(0.01, 0.97, f"{above} of {len(latency)} inferences above {ceiling:.2g} ms, off scale",
                     transform=top.transAxes, fontsize=7, va="top")
    top.set_ylabel("ms")
    top.grid(alpha=0.3)
    if latency or budget:
        top.legend(loc="upper right", fontsize=8)
    bottom.step(times, [order.index(e["variant"]) for e in events], where="post", color="#2b8a3e")
    bottom.set_yticks(range(len(order)), order, fontsize=7)
    bottom.set_xlabel("time (s)")
    bottom.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
    switches = [e for i, e in enumerate(events) if i and e["variant"] != events[i - 1]["variant"]]
    overheads = [float(e["switch_us"]) for e in switches if e.get("switch_us") is not None]
    text = f"{len(switches)} switches"
    if overheads:
        text += f", overhead median {sorted(overheads)[len(overheads) // 2]:.1f} us, max {max(overheads):.1f} us"
    return text + "."


def _host_p50(variant: Variant) -> float | None:
    measured = variant.host.get("fp32") if isinstance(variant.host, dict) else None
    return _finite(measured.get("p50_ms")) if isinstance(measured, dict) else None


def _finite(value: Any) -> float | None:
    """A manifest number as a float, or None when absent or not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _dense(portfolio: Portfolio) -> Variant:
    """The dense model: the densest variant (the largest and earliest among equals)."""
    return max(portfolio.variants, key=lambda v: (v.density, v.params, -v.round))


def _portfolio_memory(portfolio: Portfolio, device: str, precision: str) -> dict[str, Any] | None:
    """The manifest's whole-portfolio memory figures of a device at a precision (``device bench``)."""
    devices = portfolio.extra.get("devices")
    entry = devices.get(device) if isinstance(devices, dict) else None
    summary = entry.get(precision) if isinstance(entry, dict) else None
    return summary if isinstance(summary, dict) else None


def _facts(portfolio: Portfolio, device: str) -> dict[str, Any]:
    for v in portfolio.variants:
        entry = v.devices.get(device) if isinstance(v.devices, dict) else None
        facts = entry.get("facts") if isinstance(entry, dict) else None
        if isinstance(facts, dict) and facts:
            return facts
    devices = portfolio.extra.get("devices")
    entry = devices.get(device) if isinstance(devices, dict) else None
    facts = entry.get("facts") if isinstance(entry, dict) else None
    return facts if isinstance(facts, dict) else {}


# ----------------------------------------------------------------------------- page
def _html(portfolio: Portfolio, figures: list[tuple[str, str, str]], out: Path, notes: Sequence[str] = ()) -> str:
    dense = _dense(portfolio)
    largest = max(v.params for v in portfolio.variants)
    front = {v.name for v in portfolio.pareto_front()}
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>lightning-shifter portfolio: {html.escape(portfolio.root.name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Portfolio <code>{html.escape(str(portfolio.root))}</code></h1>",
        f"<p class='sub'>{len(portfolio)} variants, input {list(portfolio.input_shape)} {portfolio.input_dtype}; "
        f"the smallest has {largest / max(min(v.params for v in portfolio.variants), 1):.1f}x fewer "
        "parameters than the largest.</p>",
        _headline(portfolio, notes),
    ]
    for file_name, title, caption in figures:
        data = base64.b64encode((out / file_name).read_bytes()).decode("ascii")
        parts.append(
            f"<figure><h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)} (also saved as {html.escape(file_name)})</figcaption></figure>"
        )
    parts.append("<h2>Variants</h2>")
    parts.append(_variants_table(portfolio, front, dense))
    parts.append("<p class='note'>Bold rows are on the Pareto front (higher accuracy, fewer parameters and MACs). "
                 f"Size is against the dense model, {html.escape(dense.name)}. Exactness error is the largest "
                 "difference between the compacted and the sparse model seen while verifying.</p>")
    series = _device_series(portfolio)
    if series:
        parts.append("<h2>Measured on devices</h2>")
        for device in sorted({device for device, _ in series}):
            parts.append(_device_section(portfolio, device, {p: s for (d, p), s in sorted(series.items()) if d == device}))
    parts.append("</body></html>")
    return "\n".join(parts)


def _headline(portfolio: Portfolio, notes: Sequence[str]) -> str:
    """The lead: the smallest variant that kept the dense model's accuracy, against dense."""
    found = headline(portfolio)
    if found is None:
        text = "No variant is within 1 accuracy point of the dense model (or round 0 was not evaluated)."
    else:
        text = f"Headline: {found.text()}."
        if portfolio.skipped:
            text += f" {len(portfolio.skipped)} rounds were not kept (see the manifest's skipped entries)."
    items = "".join(f"<p class='lead'>{html.escape(line)}</p>" for line in (text, *notes))
    return f"<section class='headline'>{items}</section>"


_FACTS = ("model", "manufacturer", "soc", "abi", "cores", "governor", "android_release", "kernel", "mem_total_kb")


def _device_section(portfolio: Portfolio, device: str, by_precision: dict[str, dict[str, dict[str, float]]]) -> str:
    facts = _facts(portfolio, device)
    known = ", ".join(f"{key.replace('_', ' ')} {html.escape(str(facts[key]))}" for key in _FACTS if key in facts)
    columns = ["variant", "precision", "load (ms)", "first inference (ms)", "p50 (ms)", "p90 (ms)", "switch (us)",
               "reload (ms)", "switch vs reload", "RSS alone (MB)", "peak RSS alone (MB)"]
    rows = [f"<h3>{html.escape(device)}</h3>", f"<p class='sub'>{known or 'no device facts recorded'}</p>",
            "<div class='scroll'><table><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"]
    for precision, by_name in by_precision.items():
        for name in portfolio.names:
            if name not in by_name:
                continue
            measured = portfolio[name].devices[device][precision]
            speedup = _finite(measured.get("switch_speedup"))
            cells = [name, precision, *(_number(_finite(measured.get(k)), 2) for k in ("load_ms", "first_infer_ms")),
                     *(_number(_finite(measured.get(k))) for k in ("p50_ms", "p90_ms", "switch_us")),
                     _number(_finite(measured.get("reload_ms")), 2), "" if speedup is None else f"{speedup:,.0f}x",
                     _megabytes(measured.get("alone_rss_kb")), _megabytes(measured.get("alone_peak_rss_kb"))]
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        summary = _portfolio_memory(portfolio, device, precision)
        if summary is not None:
            ratio = _finite(summary.get("ratio"))
            versus = "" if ratio is None else f" ({ratio:.2f}x {html.escape(str(summary.get('dense', 'dense')))})"
            rows.append(f"<tr class='front'><td>whole portfolio</td><td>{html.escape(precision)}</td>"
                        + "<td></td>" * 7 + f"<td>{_megabytes(summary.get('portfolio_rss_kb'))}{versus}</td>"
                        f"<td>{_megabytes(summary.get('portfolio_peak_rss_kb'))}</td></tr>")
    rows.append("</table></div>")
    return "\n".join(rows)


def _variants_table(portfolio: Portfolio, front: set[str], dense: Variant) -> str:
    columns = ["variant", "round", "density", "params", "size vs dense", "MACs", "acc sparse", "acc compacted",
               "acc int8", "exactness error", "host p50 fp32 (ms)", "host p50 int8 (ms)", "files"]
    rows = ["<div class='scroll'><table><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"]
    for v in portfolio.variants:
        int8 = v.host.get("int8", {}) if isinstance(v.host, dict) else {}
        cells = [
            v.name, str(v.round), f"{v.density:.4f}", f"{v.params:,}", f"{dense.params / max(v.params, 1):.2f}x",
            f"{v.macs:,}", _percent(v.metrics.get("val_acc_sparse")), _percent(v.metrics.get("val_acc_compacted")),
            _percent(v.metrics.get("val_acc_int8")),
            "" if v.exactness_error is None else f"{v.exactness_error:.1e}",
            _number(_host_p50(v)), _number(int8.get("p50_ms") if isinstance(int8, dict) else None),
            ", ".join(f"{role} {entry.bytes / 1024:.0f} KiB" for role, entry in sorted(v.files.items())),
        ]
        css = " class='front'" if v.name in front else ""
        rows.append(f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    rows.append("</table></div>")
    return "\n".join(rows)


def _percent(value: Any) -> str:
    return f"{100 * float(value):.2f}%" if isinstance(value, (int, float)) and math.isfinite(value) else ""


def _number(value: Any, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if isinstance(value, (int, float)) else ""


def _megabytes(kib: Any) -> str:
    value = _finite(kib)
    return "" if value is None else f"{value / 1024:.1f}"
