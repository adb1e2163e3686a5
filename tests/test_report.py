"""The HTML report renders every plot from a portfolio's manifest, offline and self-contained."""

import base64
import io
import re
import shutil
import subprocess

import matplotlib.image
import numpy as np
import pytest

from lightning_shifter.portfolio import Portfolio, Variant
from lightning_shifter.report import write_report
from lightning_shifter.sessions import load_session


def _layers(kept: int) -> list[dict]:
    return [
        {"name": "conv1", "kind": "Conv2d", "channels_before": 16, "channels_after": 16},
        {"name": "bn1", "kind": "BatchNorm2d", "channels_before": 16, "channels_after": 16},
        {"name": "conv2", "kind": "Conv2d", "channels_before": 32, "channels_after": kept},
        {"name": "fc", "kind": "Linear", "channels_before": 10, "channels_after": 10},
    ]


@pytest.fixture
def portfolio(tmp_path):
    p = Portfolio.create(tmp_path / "portfolio", input_shape=(1, 1, 8, 8))
    # (round, params, macs, accuracy, p50 ms): round 1 dominates rounds 0 and 2 (fewer params and MACs, higher accuracy)
    rows = [(0, 5000, 90000, 0.95, 0.30), (1, 3000, 60000, 0.96, 0.22), (2, 3500, 70000, 0.94, 0.25), (3, 800, 20000, 0.90, 0.10)]
    for rnd, params, macs, acc, p50 in rows:
        name = f"round-{rnd:02d}"
        entry = p.write_file(name, "fp32", b"x" * (100 + rnd))
        p.put_variant(Variant(name=name, round=rnd, density=0.8**rnd, params=params, macs=macs, files={"fp32": entry},
                              metrics={"val_acc_sparse": acc, "val_acc_compacted": acc}, exactness_error=0.0,
                              compaction={"layers": _layers(32 - 8 * rnd)}, host={"fp32": {"p50_ms": p50}}))
    return p


def _images(page: str) -> list[np.ndarray]:
    found = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    return [matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png") for data in found]


def test_report_embeds_every_plot_and_the_table(portfolio, tmp_path):
    session = [{"t": 0.1 * i, "variant": "round-03" if i > 10 else "round-00", "latency_ms": 0.3 - 0.01 * (i > 10),
                "budget_ms": 1.0 if i <= 10 else 0.2, "switch_us": 3.0 if i == 11 else None} for i in range(20)]
    page_path = write_report(portfolio.root, tmp_path / "out", sessions={"budget drops": session})
    page = page_path.read_text()
    images = _images(page)
    assert len(images) == 3  # trade-off, per-layer channels, session timeline
    for image in images:
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert float(image[..., :3].std()) > 0.05  # not a blank canvas
    for name in ("tradeoff.png", "layers.png", "session-0.png"):
        assert (tmp_path / "out" / name).stat().st_size > 10_000
    assert "<script" not in page and "http" not in page  # self-contained, offline
    front_rows = re.findall(r"<tr class='front'><td>(round-\d\d)</td>", page)
    assert front_rows == ["round-01", "round-03"]  # round-01 dominates round-00 and round-02
    assert "1 switches, overhead median 3.0 us" in page


def test_report_without_measurements_still_renders(tmp_path):
    p = Portfolio.create(tmp_path / "p", input_shape=(1, 4))
    p.put_variant(Variant(name="only", round=0, density=1.0, params=10, macs=10, metrics={"val_acc_sparse": 0.5}))
    page = write_report(p.root).read_text()
    assert len(_images(page)) == 1
    assert (p.root / "report" / "index.html").is_file()


def test_report_of_an_empty_portfolio_says_what_to_do(tmp_path):
    Portfolio.create(tmp_path / "empty", input_shape=(1, 4))
    with pytest.raises(ValueError, match="lists no variants"):
        write_report(tmp_path / "empty")


def test_session_log_is_validated(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"events": [{"t": 0, "variant": "a"}]}')
    assert load_session(good) == [{"t": 0, "variant": "a"}]
    bad = tmp_path / "bad.json"
    bad.write_text('[{"variant": "a"}]')
    with pytest.raises(ValueError, match="expected a list of events"):
        load_session(bad)


# ---------------------------------------------------------------- many variants, devices, a browser
DEVICES = ("R5CT21ABCDE", "host-native")


def measured_portfolio(root, count: int) -> Portfolio:
    """``count`` variants measured on the host and on two devices, shaped like a real IMP run: the first
    rounds compact to about the dense size at about its accuracy, in a crowd around it (round 4 exactly
    on it), the later ones shrink and lose accuracy."""
    p = Portfolio.create(root, input_shape=(1, 3, 32, 32))
    for r in range(count):
        name = f"round-{r:02d}"
        params = 11_000_000 - 20_000 * r if r < 9 else int(11_000_000 * 0.8 ** (0.9 * (r - 8)))
        accuracy = 0.93 + 0.001 * (r % 3) if r < 9 else 0.93 - 0.004 * (r - 8) ** 1.5
        if r == 4:
            params, accuracy = 11_000_000, 0.93
        devices = {device: {"facts": {"model": f"phone {i}", "abi": "arm64-v8a", "cores": 8},
                            "fp32": {"load_ms": 10.0, "first_infer_ms": 3.0, "p50_ms": 3e-7 * params + 0.05 * (i + 1),
                                     "p90_ms": 3.5, "switch_us": 0.008 * (i + 1), "reload_ms": 2e-6 * params + 1,
                                     "switch_speedup": 1e5, "alone_rss_kb": 20000 + params // 200,
                                     "alone_peak_rss_kb": 30000 + params // 200}}
                   for i, device in enumerate(DEVICES)}
        p.put_variant(Variant(name, round=r, density=0.8**r, params=params, macs=params * 50,
                              files={"fp32": p.write_file(name, "fp32", b"x" * (100 + r))},
                              metrics={"val_acc_sparse": accuracy, "val_acc_compacted": accuracy}, exactness_error=0.0,
                              compaction={"layers": _layers(max(1, 32 - r))},
                              host={"fp32": {"p50_ms": 2e-7 * params + 0.02}}, devices=devices))
    p.extra["devices"] = {device: {"fp32": {"portfolio_rss_kb": 90000, "dense_rss_kb": 70000, "ratio": 1.29,
                                            "dense": "round-00"}} for device in DEVICES}
    p.save()
    return p


def _extents(texts, renderer):
    from matplotlib.text import Text

    texts = [t for t in texts if t.get_visible() and t.get_text()]
    for t in texts:
        if hasattr(t, "update_positions"):
            t.update_positions(renderer)
    # Text's own extent: an annotation's would include its leader line
    return [(t.get_text(), Text.get_window_extent(t, renderer)) for t in texts]


def _assert_apart(boxes, what):
    for i, (text_a, a) in enumerate(boxes):
        for text_b, b in boxes[i + 1:]:
            assert not a.overlaps(b), f"{what}: {text_a!r} overlaps {text_b!r}"


def _rounds(label: str) -> list[int]:
    rounds = []
    for part in label.split(", "):
        first, _, last = part.partition("-")
        rounds += list(range(int(first), int(last or first) + 1))
    return rounds


@pytest.mark.parametrize("count", [11, 25])
def test_every_figure_stays_legible_with_many_variants(tmp_path, count):
    import matplotlib.pyplot as plt

    from lightning_shifter import report

    portfolio = measured_portfolio(tmp_path / "p", count)
    page_width = 1200 - 2 * 16  # the page's max-width less its padding, in CSS pixels
    tradeoff = report._tradeoff_figure(portfolio)
    renderer = tradeoff.canvas.get_renderer()
    panels = [ax for ax in tradeoff.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 3
    for ax in panels:
        labels = _extents(ax.texts, renderer)
        _assert_apart(labels, "point labels")
        assert sorted(r for text, _ in labels for r in _rounds(text)) == list(range(count))  # each round named once
        dense_label = next(text for text, _ in labels if 0 in _rounds(text))
        assert 4 in _rounds(dense_label)  # variants on the same spot share a label ("0-8"), never print over
        area = ax.get_window_extent(renderer)
        assert all(area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1
                   for _, box in labels)
        ring = next(c for c in ax.collections if c.get_label() == "dense model (round-00)")
        dots = next(c for c in ax.collections if c.get_label().startswith("_"))
        assert ring.get_zorder() > dots.get_zorder()  # drawn over round-04, which lies on the same spot
        assert tuple(ring.get_offsets()[0])[1] == pytest.approx(93.0)
        # axis labels stay clear of the other panels
        own = [box for _, box in _extents(ax.get_yticklabels() + [ax.yaxis.label], renderer)]
        for other in tradeoff.axes:
            if other is not ax:
                assert not any(box.overlaps(other.get_window_extent(renderer)) for box in own)
    assert tradeoff.bbox.width <= page_width  # shown unscaled on the page
    plt.close(tradeoff)

    devices = report._devices_figure(portfolio)
    renderer = devices.canvas.get_renderer()
    devices.canvas.draw()
    bottom = devices.axes[2]
    ticks = _extents(bottom.get_xticklabels(), renderer)
    assert [text for text, _ in ticks] == portfolio.names
    _assert_apart(ticks, "variant names")
    legend = " ".join(t.get_text() for ax in devices.axes for t in ax.get_legend().get_texts())
    assert all(device in legend for device in DEVICES)
    assert devices.bbox.width <= page_width
    plt.close(devices)

    layers = report._layers_figure(portfolio)
    layers.canvas.draw()
    _assert_apart(_extents(layers.axes[0].get_xticklabels(), layers.canvas.get_renderer()), "round labels")
    assert layers.bbox.width <= page_width
    plt.close(layers)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise AssertionError("the report test needs a headless Chromium: apt-get install chromium (.ci/run installs it)")


def test_the_page_shows_every_variant_and_device_in_chromium(tmp_path):
    portfolio = measured_portfolio(tmp_path / "p", 11)
    page = write_report(portfolio.root)
    browser = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400"]
    shot = tmp_path / "page.png"
    subprocess.run([*browser, f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1280)
    assert float(pixels.std()) > 0.1  # not blank
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert float((saturation > 0.3).mean()) > 0.005  # the colour plots were decoded and drawn

    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    shown = _visible_text(dom)
    for name in portfolio.names:
        assert shown.count(name) >= 1 + len(DEVICES), name  # the variants table and each device's table
    for device in DEVICES:
        assert f"\n{device}\n" in shown  # a section per device, with its facts
    assert "model phone 0, abi arm64-v8a, cores 8" in shown
    assert shown.count("\nwhole portfolio\n") == len(DEVICES)  # a memory row per device
    assert len(re.findall(r"data:image/png;base64", dom)) == 3  # trade-off, devices, layers


def _visible_text(dom: str) -> str:
    from html.parser import HTMLParser

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []
            self.hidden = 0

        def handle_starttag(self, tag, attrs):
            self.hidden += tag in ("style", "script", "title")
            if tag in ("h1", "h2", "h3", "p", "tr", "td", "th", "figcaption"):
                self.parts.append("\n")

        def handle_endtag(self, tag):
            self.hidden -= tag in ("style", "script", "title")
            if tag in ("h3", "td", "th"):
                self.parts.append("\n")

        def handle_data(self, data):
            if not self.hidden:
                self.parts.append(data)

    parser = Text()
    parser.feed(dom)
    return "".join(parser.parts)


def test_labels_of_crowded_points_find_free_spots():
    import matplotlib.pyplot as plt

    from lightning_shifter import report

    fig, ax = plt.subplots(figsize=(4, 3), dpi=110)
    # 25 variants 8-14 px apart (a crowd that prints round numbers over each other at a fixed offset)
    points = [(1.0 + 0.02 * (r % 5) + 0.003 * r, 90.0 + 0.35 * (r // 5), 10 + r) for r in range(25)]
    ax.scatter([x for x, _, _ in points], [y for _, y, _ in points], s=20)
    ax.set_xlim(0.8, 1.4)
    ax.set_ylim(88, 94)
    fig.canvas.draw()
    report._label_points(ax, points)
    labels = _extents(ax.texts, fig.canvas.get_renderer())
    _assert_apart(labels, "point labels")
    assert sorted(r for text, _ in labels for r in _rounds(text)) == list(range(10, 35))
    plt.close(fig)
