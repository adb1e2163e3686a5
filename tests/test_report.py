"""The HTML report renders every plot from a portfolio's manifest, offline and self-contained."""

import base64
import io
import re

import matplotlib.image
import numpy as np
import pytest

from lightning_shifter.portfolio import Portfolio, Variant
from lightning_shifter.report import load_session, write_report


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
