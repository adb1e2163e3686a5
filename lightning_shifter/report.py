"""A self-contained HTML report of a portfolio: plots (also written as PNG files) and tables.

The page embeds its images as data URIs and uses no script, so it opens offline anywhere and can be
mailed as one file. It reads only the portfolio directory (and optional switching-session logs), so
it works on the deployment side too.

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
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_shifter.portfolio import Portfolio, Variant, headline

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #1d2330; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } .sub { color: #5a6477; margin-top: 0; }
figure { margin: 1.5rem 0; } figcaption { color: #5a6477; font-size: 0.9rem; }
img { max-width: 100%; border: 1px solid #e3e6ec; border-radius: 6px; }
table { border-collapse: collapse; font-size: 0.85rem; width: 100%; }
th, td { padding: 0.3rem 0.5rem; border-bottom: 1px solid #e3e6ec; text-align: right; white-space: nowrap; }
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
    caption = _plot_layers(portfolio, out / "layers.png")
    if caption:
        figures.append(("layers.png", "Channels kept per layer and round", caption))
    for index, (title, events) in enumerate((sessions or {}).items()):
        name = f"session-{index}.png"
        figures.append((name, f"Switching session: {title}", _plot_session(events, title, out / name)))

    page = out / "index.html"
    page.write_text(_html(portfolio, figures, out, notes), encoding="utf-8")
    return page


def load_session(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a switching-session log written as JSON (a list of events, or ``{"events": [...]}``)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    events = data.get("events") if isinstance(data, dict) else data
    if not isinstance(events, list) or not all(isinstance(e, dict) and "t" in e and "variant" in e for e in events):
        raise ValueError(f"{path}: expected a list of events with at least 't' and 'variant'")
    return events


# ----------------------------------------------------------------------------- figures
def _plot_tradeoff(portfolio: Portfolio, path: Path) -> str:
    import matplotlib.pyplot as plt

    variants = [v for v in portfolio.variants if v.accuracy is not None]
    front = {v.name for v in portfolio.pareto_front()}
    latency = [(v, _host_p50(v)) for v in variants]
    has_latency = any(ms is not None for _, ms in latency)
    panels = [("params", "parameters"), ("macs", "MACs per inference")] + ([("latency", "host latency p50 (ms)")] if has_latency else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        points = [(v, ms if key == "latency" else getattr(v, key)) for v, ms in latency]
        points = [(v, x) for v, x in points if x is not None]
        xs = [x for _, x in points]
        ys = [100 * v.accuracy for v, _ in points]
        colors = [v.density for v, _ in points]
        scatter = ax.scatter(xs, ys, c=colors, cmap="viridis", vmin=0, vmax=1, s=46, zorder=3, edgecolors="white")
        on_front = sorted((x, 100 * v.accuracy) for v, x in points if v.name in front)
        if len(on_front) > 1:
            ax.step([p[0] for p in on_front], [p[1] for p in on_front], where="post", color="#d9480f", lw=1.4,
                    zorder=2, label="Pareto front (params, MACs)")
            ax.legend(loc="lower right", fontsize=8)
        for v, x in points:
            ax.annotate(str(v.round), (x, 100 * v.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if xs and max(xs) / max(min(xs), 1e-12) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
    fig.colorbar(scatter, ax=axes[0].tolist(), label="density (nonzero weights)", shrink=0.85)
    fig.suptitle("Each point is a variant (labelled by its pruning round)", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "Accuracy of each compacted variant against its parameter count, MACs and measured host latency."


def _plot_layers(portfolio: Portfolio, path: Path) -> str | None:
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
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(variants) + 3), max(3.0, 0.22 * len(names) + 1.5)))
    image = ax.imshow(kept, aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(variants)), [f"{v.round}\n{v.density:.2g}" for v in variants], fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("round / density")
    fig.colorbar(image, ax=ax, label="fraction of output channels kept")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "Output channels (features) each convolution and linear layer keeps after exact compaction, per round."


def _plot_session(events: Sequence[Mapping[str, Any]], title: str, path: Path) -> str:
    import matplotlib.pyplot as plt

    times = [float(e["t"]) for e in events]
    order = sorted({e["variant"] for e in events})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    latency = [(t, e["latency_ms"]) for t, e in zip(times, events) if e.get("latency_ms") is not None]
    if latency:
        top.plot([t for t, _ in latency], [ms for _, ms in latency], ".", ms=3, color="#1971c2", label="inference latency")
    budget = [(t, e["budget_ms"]) for t, e in zip(times, events) if e.get("budget_ms") is not None]
    if budget:
        top.step([t for t, _ in budget], [b for _, b in budget], where="post", color="#d9480f", label="latency budget")
    top.set_ylabel("ms")
    top.grid(alpha=0.3)
    if latency or budget:
        top.legend(loc="upper right", fontsize=8)
    bottom.step(times, [order.index(e["variant"]) for e in events], where="post", color="#2b8a3e")
    bottom.set_yticks(range(len(order)), order, fontsize=7)
    bottom.set_xlabel("time (s)")
    bottom.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    switches = [e for i, e in enumerate(events) if i and e["variant"] != events[i - 1]["variant"]]
    overheads = [float(e["switch_us"]) for e in switches if e.get("switch_us") is not None]
    text = f"{len(switches)} switches"
    if overheads:
        text += f", overhead median {sorted(overheads)[len(overheads) // 2]:.1f} us, max {max(overheads):.1f} us"
    return text + "."


def _host_p50(variant: Variant) -> float | None:
    measured = variant.host.get("fp32") if isinstance(variant.host, dict) else None
    value = measured.get("p50_ms") if isinstance(measured, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


# ----------------------------------------------------------------------------- page
def _html(portfolio: Portfolio, figures: list[tuple[str, str, str]], out: Path, notes: Sequence[str] = ()) -> str:
    dense = max(portfolio.variants, key=lambda v: v.params)
    front = {v.name for v in portfolio.pareto_front()}
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>lightning-shifter portfolio: {html.escape(portfolio.root.name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Portfolio <code>{html.escape(str(portfolio.root))}</code></h1>",
        f"<p class='sub'>{len(portfolio)} variants, input {list(portfolio.input_shape)} {portfolio.input_dtype}; "
        f"the smallest has {dense.params / max(min(v.params for v in portfolio.variants), 1):.1f}x fewer "
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
                 "Exactness error is the largest difference between the compacted and the sparse model seen while "
                 "verifying.</p></body></html>")
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


def _variants_table(portfolio: Portfolio, front: set[str], dense: Variant) -> str:
    columns = ["variant", "round", "density", "params", "size vs dense", "MACs", "acc sparse", "acc compacted",
               "acc int8", "exactness error", "host p50 fp32 (ms)", "host p50 int8 (ms)", "files"]
    rows = ["<table><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"]
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
    rows.append("</table>")
    return "\n".join(rows)


def _percent(value: Any) -> str:
    return f"{100 * float(value):.2f}%" if isinstance(value, (int, float)) and math.isfinite(value) else ""


def _number(value: Any) -> str:
    return f"{float(value):.3f}" if isinstance(value, (int, float)) else ""
