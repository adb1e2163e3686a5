"""Portfolio: the manifest round trip, atomic writes, validation of tampered folders, Pareto front."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_shifter.portfolio import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    FileEntry,
    Portfolio,
    PortfolioError,
    Variant,
    sha256_file,
)

SHAPE = (1, 1, 8, 8)


def make_variant(name: str = "round-00", round: int = 0, files: dict | None = None, **fields) -> Variant:
    values = {"density": 1.0, "params": 100, "macs": 1000, "metrics": {"val_acc_compacted": 0.9}} | fields
    return Variant(name=name, round=round, files=files or {}, **values)


@pytest.fixture
def portfolio(tmp_path: Path) -> Portfolio:
    """A portfolio with one variant ``round-00`` holding a pt2 and an fp32 file."""
    p = Portfolio.create(tmp_path / "p", input_shape=SHAPE)
    files = {"pt2": p.write_file("round-00", "pt2", b"program" * 100), "fp32": p.write_file("round-00", "fp32", b"pte")}
    p.put_variant(make_variant(files=files))
    return p


def read_manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST_NAME).read_text())


def write_manifest(root: Path, data: dict) -> None:
    (root / MANIFEST_NAME).write_text(json.dumps(data))


def edit_variant(root: Path, **fields) -> None:
    data = read_manifest(root)
    data["variants"][0].update(fields)
    write_manifest(root, data)


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp"))


# ---------------------------------------------------------------- round trip


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    p = Portfolio.create(tmp_path, input_shape=SHAPE, input_dtype="float32")
    pt2 = p.write_file("round-02", "pt2", lambda f: f.write(b"\x00\x01" * 50))
    fp32 = p.write_file("round-02", "fp32", b"abc")
    later = make_variant(
        "round-02", 2, files={"pt2": pt2, "fp32": fp32}, density=0.64, params=40, macs=400,
        metrics={"val_acc_sparse": 0.95, "val_acc_compacted": 0.95}, exactness_error=1e-7,
        compaction={"params_before": 100, "layers": [{"name": "conv", "kind": "Conv2d", "channels_before": 8,
                                                       "channels_after": 5, "removed_zero": 3}]},
        programs={"fp32": {"source_sha256": pt2.sha256, "portable_ops": ["aten.cumsum.default"]}},
        host={"fp32": {"p50_ms": 0.1}}, devices={"pixel": {"fp32": {"p50_ms": 1.0}}},
    )
    p.put_variant(later)
    p.put_variant(make_variant("round-00", 0))

    back = Portfolio.open(tmp_path)
    assert back.input_shape == SHAPE and back.input_dtype == "float32"
    assert back.names == ["round-00", "round-02"]  # round order, not insertion order
    assert back["round-02"].to_json() == later.to_json()
    assert back["round-02"].files["pt2"] == FileEntry("round-02/model.pt2", 100, sha256_file(tmp_path / "round-02/model.pt2"))
    assert back.file_path("round-02", "fp32") == (tmp_path / "round-02/model.pte").resolve()
    assert "round-02" in back and "round-01" not in back and len(back) == 2
    assert read_manifest(tmp_path)["schema_version"] == SCHEMA_VERSION
    assert leftovers(tmp_path) == []


def test_put_variant_replaces_by_name_and_update_merges(portfolio: Portfolio) -> None:
    portfolio.put_variant(make_variant(params=7, files=portfolio["round-00"].files))
    portfolio.update_variant("round-00", metrics={"val_acc_int8": 0.8}, macs=5)
    back = Portfolio.open(portfolio.root)
    assert back.names == ["round-00"]
    assert (back["round-00"].params, back["round-00"].macs) == (7, 5)
    assert back["round-00"].metrics == {"val_acc_compacted": 0.9, "val_acc_int8": 0.8}
    with pytest.raises(PortfolioError, match="no field 'colour'"):
        portfolio.update_variant("round-00", colour="red")


def test_load_module_runs_the_saved_program(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = torch.randn(SHAPE)
    program = torch.export.export(model, (x,))
    p = Portfolio.create(tmp_path, input_shape=SHAPE)
    p.put_variant(make_variant(files={"pt2": p.write_file("round-00", "pt2", lambda f: torch.export.save(program, f))}))
    loaded = Portfolio.open(tmp_path).load_module("round-00")
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_create_reopens_a_matching_portfolio_and_refuses_another_input(portfolio: Portfolio) -> None:
    assert Portfolio.create(portfolio.root, input_shape=SHAPE).names == ["round-00"]
    with pytest.raises(PortfolioError, match=r"already holds a portfolio for input \[1, 1, 8, 8\].*another folder"):
        Portfolio.create(portfolio.root, input_shape=(1, 3, 32, 32))


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [((1, 1, 8, 8), "complex64", "unsupported input dtype"), ((), "float32", "1 to 8 dimensions"),
     ((1, 0), "float32", "an integer from 1 to 16777216"), ((1,) * 9, "float32", "1 to 8 dimensions"),
     ((1, True, 8), "float32", "an integer from 1"), ((1, 2**25), "float32", "an integer from 1 to 16777216"),
     ((16, 3, 4096, 4096), "float32", "805306368 elements, more than 67108864")],
)
def test_create_rejects_bad_input_specs(tmp_path: Path, shape, dtype, message) -> None:
    with pytest.raises(PortfolioError, match=message):
        Portfolio.create(tmp_path, input_shape=shape, input_dtype=dtype)


def test_unknown_names_and_roles_give_clear_errors(portfolio: Portfolio) -> None:
    with pytest.raises(PortfolioError, match="no variant named 'round-09'.*known variants: round-00"):
        portfolio["round-09"]
    with pytest.raises(PortfolioError, match="has no 'int8' file.*export the portfolio first"):
        portfolio.file_path("round-00", "int8")
    with pytest.raises(PortfolioError, match="unknown file role 'onnx'"):
        portfolio.write_file("round-00", "onnx", b"")


# ---------------------------------------------------------------- atomic writes


def test_a_writer_failing_midway_leaves_the_previous_file_and_manifest(portfolio: Portfolio) -> None:
    manifest_before = (portfolio.root / MANIFEST_NAME).read_bytes()

    def crash_after_half(f) -> None:
        f.write(b"half a program")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        portfolio.write_file("round-00", "pt2", crash_after_half)  # replacing a listed variant's file
    with pytest.raises(OSError, match="disk full"):
        portfolio.write_file("round-01", "pt2", crash_after_half)  # a new variant

    assert (portfolio.root / MANIFEST_NAME).read_bytes() == manifest_before
    back = Portfolio.open(portfolio.root)  # verifies every sha256
    assert back.names == ["round-00"]
    assert not (portfolio.root / "round-01/model.pt2").exists()
    assert leftovers(portfolio.root) == []


def test_a_crash_while_saving_the_manifest_keeps_the_old_one(portfolio: Portfolio, monkeypatch) -> None:
    manifest_before = (portfolio.root / MANIFEST_NAME).read_bytes()
    entry = portfolio.write_file("round-01", "pt2", b"new program")

    def crash(fd: int) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="power cut"):
        portfolio.put_variant(make_variant("round-01", 1, files={"pt2": entry}))
    monkeypatch.undo()

    assert (portfolio.root / MANIFEST_NAME).read_bytes() == manifest_before
    assert Portfolio.open(portfolio.root).names == ["round-00"]
    assert leftovers(portfolio.root) == []


def test_put_variant_refuses_files_that_are_not_there(tmp_path: Path) -> None:
    p = Portfolio.create(tmp_path, input_shape=SHAPE)
    ghost = FileEntry("round-00/model.pt2", 10, "0" * 64)
    with pytest.raises(PortfolioError, match="listed in the manifest but missing"):
        p.put_variant(make_variant(files={"pt2": ghost}))
    assert Portfolio.open(tmp_path).names == []


def test_a_refused_put_keeps_the_previous_entry_in_memory(portfolio: Portfolio) -> None:
    before = portfolio["round-00"]
    ghost = FileEntry("round-00/model_int8.pte", 10, "0" * 64)
    with pytest.raises(PortfolioError, match="listed in the manifest but missing"):
        portfolio.put_variant(make_variant(files={"int8": ghost}))
    assert portfolio["round-00"] is before
    assert Portfolio.open(portfolio.root).names == ["round-00"]


def test_remove_variant_unlists_it_and_keeps_its_files(portfolio: Portfolio) -> None:
    portfolio.put_variant(make_variant(name="round-01", round=1))
    portfolio.remove_variant("round-00")
    assert Portfolio.open(portfolio.root).names == ["round-01"]
    assert (portfolio.root / "round-00" / "model.pt2").is_file()
    with pytest.raises(PortfolioError, match="no variant named 'round-00'"):
        portfolio.remove_variant("round-00")


# ---------------------------------------------------------------- damaged or tampered folders


def test_tampered_file_fails_its_sha256(portfolio: Portfolio) -> None:
    path = portfolio.root / "round-00/model.pt2"
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(PortfolioError, match=r"model\.pt2 \(variant 'round-00', pt2\) does not match its sha256.*recreate the variant \(lightning-shifter compact"):
        Portfolio.open(portfolio.root)
    assert Portfolio.open(portfolio.root, verify="size").names == ["round-00"]  # a cheaper check misses it
    with pytest.raises(PortfolioError, match="sha256"):
        Portfolio.open(portfolio.root, verify=False).load_module("round-00")


def test_truncated_file_is_reported_with_both_sizes(portfolio: Portfolio) -> None:
    path = portfolio.root / "round-00/model.pt2"
    path.write_bytes(path.read_bytes()[:123])
    with pytest.raises(PortfolioError, match="has 123 bytes, the manifest says 700: the file is truncated"):
        Portfolio.open(portfolio.root, verify="size")


def test_missing_file_is_reported(portfolio: Portfolio) -> None:
    (portfolio.root / "round-00/model.pte").unlink()
    with pytest.raises(PortfolioError, match=r"model\.pte \(variant 'round-00', fp32\) is listed in the manifest but missing"):
        Portfolio.open(portfolio.root)


@pytest.mark.parametrize(
    "path", ["../outside/model.pt2", "round-00/../../model.pt2", "/etc/passwd", "round-00\\model.pt2", "", "round-00//model.pt2"]
)
def test_paths_that_leave_the_folder_are_rejected(portfolio: Portfolio, path: str) -> None:
    data = read_manifest(portfolio.root)
    data["variants"][0]["files"]["pt2"]["path"] = path
    write_manifest(portfolio.root, data)
    with pytest.raises(PortfolioError, match="must be relative and stay inside the portfolio directory"):
        Portfolio.open(portfolio.root, verify=False)


def test_symlinks_out_of_the_folder_are_rejected(portfolio: Portfolio, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "model.pte").write_bytes(b"pte")  # same size and hash as the listed file
    os.replace(portfolio.root / "round-00", tmp_path / "moved")
    (portfolio.root / "round-00").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PortfolioError, match="leaves the portfolio directory"):
        Portfolio.open(portfolio.root)


def test_a_file_symlink_out_of_the_folder_is_rejected(portfolio: Portfolio, tmp_path: Path) -> None:
    secret = tmp_path / "secret.pte"
    secret.write_bytes(b"pte")
    (portfolio.root / "round-00/model.pte").unlink()
    (portfolio.root / "round-00/model.pte").symlink_to(secret)
    with pytest.raises(PortfolioError, match="'round-00/model.pte' leaves the portfolio directory"):
        Portfolio.open(portfolio.root)


def test_a_symlink_inside_the_folder_is_fine(portfolio: Portfolio) -> None:
    os.replace(portfolio.root / "round-00", portfolio.root / "store")
    (portfolio.root / "round-00").symlink_to("store", target_is_directory=True)
    assert Portfolio.open(portfolio.root).names == ["round-00"]


def test_a_version_1_manifest_opens_with_its_provenance_moved_out_of_the_timings(portfolio: Portfolio) -> None:
    pt2_sha256 = portfolio["round-00"].files["pt2"].sha256
    data = read_manifest(portfolio.root)
    assert data["schema_version"] == SCHEMA_VERSION == 2
    # what lightning-shifter wrote before version 2: provenance inside host[precision], beside the timings
    data["schema_version"] = 1
    data["variants"][0].pop("programs")
    data["variants"][0]["host"] = {"fp32": {"source_sha256": pt2_sha256, "portable_ops": ["aten.cumsum.default"],
                                            "load_ms": 1.5, "p50_ms": 0.2, "p90_ms": 0.3}}
    data["skipped"] = [{**data["variants"][0], "name": "round-01", "round": 1, "reason": "round-00 is better",
                        "host": {"int8": {"source_sha256": pt2_sha256, "portable_ops": []}}}]
    del data["skipped"][0]["files"]
    write_manifest(portfolio.root, data)
    written = (portfolio.root / MANIFEST_NAME).read_bytes()

    opened = Portfolio.open(portfolio.root)
    variant = opened["round-00"]
    assert variant.programs == {"fp32": {"source_sha256": pt2_sha256, "portable_ops": ["aten.cumsum.default"]}}
    assert variant.host == {"fp32": {"load_ms": 1.5, "p50_ms": 0.2, "p90_ms": 0.3}}
    [skipped] = opened.skipped
    assert skipped.variant.programs == {"int8": {"source_sha256": pt2_sha256, "portable_ops": []}}
    assert skipped.variant.host == {"int8": {}}
    assert (portfolio.root / MANIFEST_NAME).read_bytes() == written  # reading converts, it does not write

    opened.save()  # the next write is version 2
    saved = read_manifest(portfolio.root)
    assert saved["schema_version"] == 2 and saved["variants"][0]["programs"] == variant.programs
    assert saved["variants"][0]["host"] == variant.host


def test_provenance_is_checked_and_survives_dropping_the_timings(portfolio: Portfolio) -> None:
    sha256 = portfolio["round-00"].files["pt2"].sha256
    portfolio.update_variant("round-00", programs={"fp32": {"source_sha256": sha256, "portable_ops": []}},
                             host={"fp32": {"p50_ms": 0.2}})
    variant = portfolio["round-00"]
    variant.host.clear()  # timings measured again elsewhere, say
    portfolio.put_variant(variant)
    assert Portfolio.open(portfolio.root)["round-00"].programs["fp32"]["source_sha256"] == sha256
    edit_variant(portfolio.root, programs={"fp32": {"source_sha256": "not a digest"}})
    with pytest.raises(PortfolioError, match=r"variants\[0\].programs.fp32.source_sha256: expected a string matching"):
        Portfolio.open(portfolio.root)


@pytest.mark.parametrize("version", [3, 0, "1", "2", 2.0, True, None])
def test_unknown_schema_versions_are_rejected(portfolio: Portfolio, version) -> None:
    data = read_manifest(portfolio.root)
    data["schema_version"] = version
    write_manifest(portfolio.root, data)
    with pytest.raises(PortfolioError, match=f"schema_version {version!r} is not supported.*reads schema_version 1 or 2"):
        Portfolio.open(portfolio.root)


@pytest.mark.parametrize("text", ['{"schema_version": 1, "variants": [', "", "\xff\xfe garbage"])
def test_invalid_json_is_reported_as_corrupt(portfolio: Portfolio, text: str) -> None:
    (portfolio.root / MANIFEST_NAME).write_bytes(text.encode("latin-1"))
    with pytest.raises(PortfolioError, match="is not valid JSON.*restore it or recreate"):
        Portfolio.open(portfolio.root)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input": {"shape": [1, -3], "dtype": "float32"}}, "every dimension must be an integer from 1"),
        ({"input": {"shape": [1, 8], "dtype": "float128"}}, "unsupported input dtype 'float128'"),
        ({"variants": {"round-00": {}}}, "'variants' must be a list"),
    ],
)
def test_malformed_top_level_fields_are_rejected(portfolio: Portfolio, change: dict, message: str) -> None:
    write_manifest(portfolio.root, read_manifest(portfolio.root) | change)
    with pytest.raises(PortfolioError, match=message):
        Portfolio.open(portfolio.root)


def test_a_top_level_array_is_rejected(portfolio: Portfolio) -> None:
    (portfolio.root / MANIFEST_NAME).write_text("[]")
    with pytest.raises(PortfolioError, match="expected a JSON object at the top level"):
        Portfolio.open(portfolio.root)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"density": 1.5}, r"density: expected a number in \[0, 1\]"),
        ({"density": True}, r"density: expected a number in \[0, 1\]"),
        ({"round": "3"}, r"round: expected a non-negative integer up to 2147483647, got '3'"),
        ({"params": -5}, r"params: expected a non-negative integer"),
        ({"macs": 1.5}, r"macs: expected a non-negative integer"),
        ({"files": {"onnx": {}}}, r"unknown role\(s\) \['onnx'\]"),
        ({"files": {"pt2": {"path": "round-00/model.pt2", "bytes": 700, "sha256": "XYZ"}}}, "64 lowercase hex"),
        ({"files": {"pt2": {"path": "round-00/model.pt2", "bytes": -1, "sha256": "0" * 64}}}, "non-negative integer"),
        ({"name": "../evil"}, "invalid variant name '../evil'"),
    ],
)
def test_malformed_variant_entries_are_rejected(portfolio: Portfolio, fields: dict, message: str) -> None:
    edit_variant(portfolio.root, **fields)
    with pytest.raises(PortfolioError, match=message):
        Portfolio.open(portfolio.root)


def test_missing_fields_and_duplicates_are_rejected(portfolio: Portfolio) -> None:
    data = read_manifest(portfolio.root)
    data["variants"].append(dict(data["variants"][0]))
    write_manifest(portfolio.root, data)
    with pytest.raises(PortfolioError, match=r"duplicate variant name\(s\) \['round-00'\]"):
        Portfolio.open(portfolio.root)
    del data["variants"][1]["macs"], data["variants"][1]["params"]
    write_manifest(portfolio.root, data)
    with pytest.raises(PortfolioError, match=r"variants\[1\]: missing field\(s\) params, macs"):
        Portfolio.open(portfolio.root)


def test_a_folder_that_is_not_a_portfolio_is_reported(tmp_path: Path) -> None:
    with pytest.raises(PortfolioError, match="is not a directory"):
        Portfolio.open(tmp_path / "nowhere")
    with pytest.raises(PortfolioError, match="manifest.json does not exist: this is not a portfolio"):
        Portfolio.open(tmp_path)


@pytest.mark.parametrize("name", ["", "-round", ".hidden", "a/b", "../x", "a b", "a;rm", "x" * 65, "ü", 3])
def test_bad_variant_names_are_rejected_everywhere(tmp_path: Path, name) -> None:
    p = Portfolio.create(tmp_path, input_shape=SHAPE)
    with pytest.raises(PortfolioError, match="invalid variant name"):
        make_variant(name)
    with pytest.raises(PortfolioError, match="invalid variant name"):
        p.write_file(name, "pt2", b"x")
    assert sorted(os.listdir(tmp_path)) == [MANIFEST_NAME]


def test_longest_allowed_name_works(tmp_path: Path) -> None:
    p = Portfolio.create(tmp_path, input_shape=SHAPE)
    name = "v" + "._-9" * 15 + "abc"  # 64 characters
    p.put_variant(make_variant(name, files={"pt2": p.write_file(name, "pt2", b"x")}))
    assert Portfolio.open(tmp_path).names == [name]


# ---------------------------------------------------------------- Pareto front


def front(variants: list[Variant], costs=("params", "macs")) -> list[str]:
    return [v.name for v in Portfolio("unused", SHAPE, variants=variants).pareto_front(costs)]


def v(name: str, acc: float | None, params: int, macs: int, round: int = 0) -> Variant:
    metrics = {} if acc is None else {"val_acc_compacted": acc}
    return Variant(name=name, round=round, density=1.0, params=params, macs=macs, metrics=metrics)


def test_pareto_front_keeps_exactly_the_non_dominated() -> None:
    variants = [
        v("dense", 0.95, 1000, 10_000, 0),
        v("mid", 0.94, 500, 5_000, 1),
        v("worse", 0.93, 600, 6_000, 2),  # mid is more accurate and cheaper on both
        v("tiny", 0.80, 100, 1_000, 3),
        v("odd", 0.90, 50, 20_000, 4),  # fewest params, most MACs: a trade-off, kept
    ]
    assert front(variants) == ["dense", "mid", "tiny", "odd"]
    assert front(variants, costs=("params",)) == ["dense", "mid", "odd"]
    assert front(variants, costs=("macs",)) == ["dense", "mid", "tiny"]


def test_pareto_front_ties() -> None:
    # identical on every axis: neither dominates, both stay
    assert front([v("a", 0.9, 100, 1000), v("b", 0.9, 100, 1000, 1)]) == ["a", "b"]
    # same accuracy, one cheaper on one cost and equal on the other: the dearer one goes
    assert front([v("a", 0.9, 100, 1000), v("b", 0.9, 100, 999, 1)]) == ["b"]
    # same costs, lower accuracy: dominated
    assert front([v("a", 0.9, 100, 1000), v("b", 0.91, 100, 1000, 1)]) == ["b"]


def test_pareto_front_uses_sparse_accuracy_when_no_compacted_one_and_skips_unmeasured() -> None:
    sparse_only = Variant(name="s", round=1, density=0.5, params=10, macs=10, metrics={"val_acc_sparse": 0.99})
    assert sparse_only.accuracy == 0.99
    assert front([v("a", 0.9, 100, 1000), sparse_only, v("unknown", None, 1, 1, 2)]) == ["s"]
    assert front([v("unknown", None, 1, 1)]) == []
