"""Keep policies: a portfolio holds no dominated duplicate by default, and every skipped round is listed."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_shifter.portfolio import KEEP_POLICIES, Portfolio, PortfolioError, Variant, headline, keep_decision

SHAPE = (1, 4)


def variant(round: int, params: int, accuracy: float | None, dense_params: int | None = None) -> Variant:
    metrics = {} if accuracy is None else {"val_acc_compacted": accuracy}
    compaction = {} if dense_params is None else {"params_before": dense_params}
    return Variant(f"round-{round:02d}", round, 0.8**round, params, 10 * params, metrics=metrics,
                   compaction=compaction)


def admit_all(root: Path, rounds: list[Variant], policy: str) -> Portfolio:
    portfolio = Portfolio.create(root, input_shape=SHAPE)
    for v in rounds:
        portfolio.admit(v, policy, lambda v=v: {"pt2": portfolio.write_file(v.name, "pt2", v.name.encode())})
    return portfolio


def dominated(a: Variant, b: Variant, policy: str) -> bool:
    """``b`` makes ``a`` redundant: same size and at least as accurate, or (Pareto, ``a`` not full-size)
    no bigger in parameters and MACs and at least as accurate."""
    if a.accuracy is None or b.accuracy is None:
        return a.params == b.params
    if a.params == b.params:
        return b.accuracy >= a.accuracy
    full_size = a.params == a.compaction.get("params_before")
    return policy == "pareto" and not full_size and b.params <= a.params and b.macs <= a.macs and b.accuracy >= a.accuracy


rounds_strategy = st.lists(
    st.tuples(st.sampled_from([100, 80, 50, 20]), st.one_of(st.none(), st.sampled_from([0.5, 0.7, 0.9, 0.95]))),
    min_size=1, max_size=8,
).map(lambda rows: [variant(r, params, acc, dense_params=100) for r, (params, acc) in enumerate(rows)])


@settings(max_examples=150, deadline=None)
@given(rounds=rounds_strategy, policy=st.sampled_from(KEEP_POLICIES))
def test_policies_keep_what_they_promise_and_list_the_rest(rounds: list[Variant], policy: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        portfolio = admit_all(Path(tmp) / "p", rounds, policy)
        reopened = Portfolio.open(portfolio.root)  # the manifest round-trips, files verified
        kept, skipped = reopened.variants, reopened.skipped
        # nothing is lost: every round is kept or listed as skipped with a reason naming a kept variant
        assert sorted([v.name for v in kept] + [s.variant.name for s in skipped]) == [v.name for v in rounds]
        for entry in skipped:
            assert entry.reason and entry.variant.files == {}
            assert not (portfolio.root / entry.variant.name).exists()  # no files left of a dropped variant
        if policy == "all":
            assert not skipped
            return
        # no two kept variants of the same size; under pareto none dominates another
        sizes = [v.params for v in kept]
        assert len(sizes) == len(set(sizes))
        for a in kept:
            for b in kept:
                if a is not b:
                    assert not dominated(a, b, policy), (a.name, b.name)
        # a skipped round names the variant that made it redundant, which is kept or skipped in turn:
        # following the chain always ends at a kept variant
        names = {v.name for v in kept}
        cause = {entry.variant.name: entry.reason.split()[0] for entry in skipped}
        for name in cause:
            seen = {name}
            while name not in names:
                name = cause[name]
                assert name not in seen, "a cycle of skipped variants"
                seen.add(name)
        if policy == "pareto" and any(v.accuracy is not None and v.params == 100 for v in rounds):
            assert any(v.params == 100 for v in kept)  # the best full-size round stays as the reference


def test_distinct_keeps_the_most_accurate_of_each_size_and_the_earlier_on_a_tie(tmp_path: Path) -> None:
    rounds = [variant(0, 100, 0.90), variant(1, 100, 0.95), variant(2, 100, 0.95), variant(3, 60, 0.80),
              variant(4, 40, 0.99)]
    portfolio = admit_all(tmp_path / "p", rounds, "distinct")
    assert portfolio.names == ["round-01", "round-03", "round-04"]
    reasons = {s.variant.name: s.reason for s in portfolio.skipped}
    assert reasons == {
        "round-00": "round-01 has the same size (100 params) and is more accurate (0.9500 vs 0.9000)",
        "round-02": "round-01 has the same size (100 params) and is as accurate (0.9500 vs 0.9500)",
    }
    pareto = admit_all(tmp_path / "q", rounds, "pareto")
    assert pareto.names == ["round-04"]  # smaller and more accurate than all the others
    full = [variant(r, v.params, v.accuracy, dense_params=100) for r, v in enumerate(rounds)]
    reference = admit_all(tmp_path / "r", full, "pareto")
    assert reference.names == ["round-01", "round-04"]  # the best full-size round stays as the reference


def test_a_redone_round_replaces_its_skipped_entry(tmp_path: Path) -> None:
    portfolio = admit_all(tmp_path / "p", [variant(0, 100, 0.9), variant(1, 100, 0.8)], "distinct")
    assert [s.variant.name for s in portfolio.skipped] == ["round-01"]
    better = variant(1, 100, 0.99)  # e.g. a resumed run that trains round 1 again
    portfolio.admit(better, "distinct", lambda: {"pt2": portfolio.write_file("round-01", "pt2", b"x")})
    assert portfolio.names == ["round-01"]
    assert [s.variant.name for s in portfolio.skipped] == ["round-00"]


def test_unknown_policy_and_bad_skipped_entries_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown keep policy 'smallest'"):
        keep_decision([], variant(0, 1, None), "smallest")
    portfolio = admit_all(tmp_path / "p", [variant(0, 100, 0.9), variant(1, 100, 0.8)], "distinct")
    manifest = portfolio.root / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"reason"', '"why"'))
    with pytest.raises(PortfolioError, match=r"skipped\[0\]: expected an object with a 'reason' text"):
        Portfolio.open(portfolio.root)


def test_headline_is_the_smallest_variant_within_a_point_of_the_best_round(tmp_path: Path) -> None:
    rounds = [variant(0, 1000, 0.95), variant(1, 1000, 0.97), variant(2, 400, 0.965), variant(3, 150, 0.962),
              variant(4, 90, 0.90)]
    for v, ms in zip(rounds, (2.0, 2.1, 1.0, 0.6, 0.4)):
        v.host = {"fp32": {"p50_ms": ms}}
        v.compaction = {"params_before": 1000}
    portfolio = admit_all(tmp_path / "p", rounds, "distinct")
    assert "round-00" not in portfolio  # same size as round 1, less accurate
    found = headline(portfolio)
    assert (found.dense_accuracy, found.best_accuracy) == (0.95, 0.97)  # round 0 is in the skipped entries
    assert (found.variant.name, found.size_ratio, found.dense_program) == ("round-03", 1000 / 150, "round-01")
    assert found.latency_ratio == pytest.approx(2.1 / 0.6)
    assert "6.67x smaller than dense" in found.text() and "best round 97.0%" in found.text()
    strict = headline(portfolio, max_accuracy_drop=0.001)
    assert strict.variant.name == "round-01" and strict.size_ratio == 1.0


def test_no_headline_without_an_evaluated_round_zero(tmp_path: Path) -> None:
    portfolio = admit_all(tmp_path / "p", [variant(0, 100, None), variant(1, 50, 0.9)], "all")
    assert headline(portfolio) is None
