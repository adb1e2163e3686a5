""".pt2 archives from anyone: torch.export.load runs code from a crafted one (shown here), every
path of ours that loads one refuses it first (compact, export, Portfolio.load_module), and archives
torch.export.save writes for real models still load."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from lightning_shifter.cli import main
from lightning_shifter.export import export_portfolio
from lightning_shifter.portfolio import Portfolio, Variant
from lightning_shifter.pt2 import ProgramError, check_archive, load_program

SHAPE = (1, 4)


class Touch:
    """Unpickling it creates a file: what a crafted archive can make torch.load run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def archive() -> bytes:
    program = torch.export.export(nn.Sequential(nn.Linear(4, 3)).eval(), (torch.randn(SHAPE),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def rewritten(data: bytes, edit: Callable[[str, bytes], bytes | None], add: dict[str, bytes] | None = None) -> bytes:
    """The archive with each entry passed through ``edit`` (None drops it) and ``add`` appended."""
    source = zipfile.ZipFile(io.BytesIO(data))
    root = source.namelist()[0].split("/")[0]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            content = edit(item.filename[len(root) + 1:], source.read(item))
            if content is not None:
                target.writestr(item, content)
        for name, content in (add or {}).items():
            target.writestr(f"{root}/{name}", content)
    return out.getvalue()


def pickled(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(Touch(marker), buffer)
    return buffer.getvalue()


def json_edit(entry: str, change: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    def edit(name: str, content: bytes) -> bytes:
        if name != entry:
            return content
        data = json.loads(content)
        change(data)
        return json.dumps(data).encode()

    return edit


def pickled_weight(marker: Path) -> bytes:
    """Weight ``0.weight`` marked use_pickle, its file replaced by a pickle that touches ``marker``."""
    def edit(name: str, content: bytes) -> bytes:
        if name == "data/weights/model_weights_config.json":
            config = json.loads(content)
            config["config"]["0.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        if name == "data/weights/" + json.loads(zip_entry(archive(), "data/weights/model_weights_config.json"))[
                "config"]["0.weight"]["path_name"]:
            return pickled(marker)
        return content

    return rewritten(archive(), edit)


def zip_entry(data: bytes, name: str) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(data))
    return source.read(source.namelist()[0].split("/")[0] + "/" + name)


def test_torch_export_load_runs_code_from_a_crafted_archive(tmp_path):
    marker = tmp_path / "ran"
    try:
        torch.export.load(io.BytesIO(pickled_weight(marker)))
    except Exception:
        pass  # the weight is no tensor: loading fails, after the pickle ran
    assert marker.exists()  # the reason for everything below


def crafted(kind: str, marker: Path) -> bytes:
    data = archive()
    if kind == "pickled weight":
        return pickled_weight(marker)
    if kind == "pickled constant":
        return rewritten(data, json_edit("data/constants/model_constants_config.json", lambda c: c["config"].update(
            c0={"path_name": "tensor_0", "is_param": False, "use_pickle": True, "tensor_meta": None})),
            {"data/constants/tensor_0": pickled(marker)})
    if kind == "opaque object":
        return rewritten(data, json_edit("data/constants/model_constants_config.json", lambda c: c["config"].update(
            c0={"path_name": "opaque_obj_0", "is_param": False, "use_pickle": False, "tensor_meta": None})),
            {"data/constants/opaque_obj_0": pickled(marker)})
    if kind == "legacy pickled weights":
        return rewritten(data, lambda name, content: content, {"data/weights/model.pt": pickled(marker)})
    if kind == "pickled sample inputs":  # torch retries without the restricted unpickler
        return rewritten(data, lambda name, content: pickled(marker) if name == "data/sample_inputs/model.pt" else content)
    if kind == "guard code":
        return rewritten(data, json_edit("models/model.json", lambda p: p.update(guards_code=["__import__('os')"])))
    if kind == "symbolic expression":
        def expression(program: dict) -> None:
            program["graph_module"]["graph"]["nodes"][0]["inputs"].append(
                {"name": "n", "arg": {"as_sym_int": {"as_expr": {"expr_str": "__import__('os').getpid()"}}}})
        return rewritten(data, json_edit("models/model.json", expression))
    if kind in ("torch.save call", "from_file call"):
        target = "torch.save" if kind == "torch.save call" else "torch.ops.aten.from_file.default"
        return rewritten(data, json_edit("models/model.json", lambda p: p["graph_module"]["graph"]["nodes"][0].update(
            target=target)))
    if kind == "native code":
        return rewritten(data, lambda name, content: content, {"data/aotinductor/model/model.so": b"\x7fELF"})
    raise AssertionError(kind)


KINDS = {
    "pickled weight": "asks to unpickle weight '0.weight'",
    "pickled constant": "asks to unpickle constant 'c0'",
    "opaque object": "which is not raw tensor data",
    "legacy pickled weights": "legacy pickled format",
    "pickled sample inputs": "sample inputs hold more than tensors",
    "guard code": "guard code or dynamic shapes",
    "symbolic expression": "symbolic shape expression",
    "torch.save call": "the graph calls 'torch.save'",
    "from_file call": "the graph calls 'torch.ops.aten.from_file.default'",
    "native code": "native code (AOTInductor)",
}


@pytest.mark.parametrize("kind", KINDS, ids=list(KINDS))
def test_crafted_archives_are_refused_before_torch_reads_them(kind, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(ProgramError, match=KINDS[kind].replace("(", r"\(").replace(")", r"\)")):
        load_program(crafted(kind, marker), what="the crafted archive")
    assert not marker.exists()


def crafted_portfolio(root: Path, marker: Path) -> Portfolio:
    """A portfolio whose variant's model.pt2 asks for pickle, its sha256 updated in the manifest (the
    manifest travels with the archive, so it vouches for nothing)."""
    portfolio = Portfolio.create(root, input_shape=SHAPE)
    entry = portfolio.write_file("evil", "pt2", pickled_weight(marker))
    portfolio.put_variant(Variant("evil", round=0, density=1.0, params=15, macs=12, files={"pt2": entry}))
    return portfolio


def test_load_module_refuses_it(tmp_path):
    portfolio = crafted_portfolio(tmp_path / "p", tmp_path / "ran")
    with pytest.raises(ProgramError, match="variant 'evil': .*asks to unpickle weight '0.weight'"):
        Portfolio.open(portfolio.root).load_module("evil")
    assert not (tmp_path / "ran").exists()


def test_export_refuses_it_and_fails_that_variant(tmp_path):
    portfolio = crafted_portfolio(tmp_path / "p", tmp_path / "ran")
    with pytest.warns(UserWarning, match="evil.*not exported.*asks to unpickle"):
        report = export_portfolio(portfolio.root, ("fp32",), measure=False)
    assert [(p.name, p.status) for p in report.programs] == [("evil", "failed")]
    assert not (tmp_path / "ran").exists()


def test_compact_refuses_it(tmp_path, capsys):
    source = tmp_path / "model.pt2"
    source.write_bytes(pickled_weight(tmp_path / "ran"))
    assert main(["compact", str(source), "--portfolio", str(tmp_path / "p")]) == 1
    assert "asks to unpickle weight '0.weight'" in capsys.readouterr().err
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_0"])
def test_archives_of_real_models_are_accepted(name):
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 32, 32),)), buffer)
    check_archive(buffer.getvalue(), name)


def test_damaged_or_foreign_files_are_errors(tmp_path):
    with pytest.raises(ProgramError, match="cannot load the archive: it is not a .pt2 archive"):
        load_program(b"not a zip file")
    with pytest.raises(ProgramError, match="holds no models/<name>.json"):
        load_program(rewritten(archive(), lambda name, content: None if name.startswith("models/") else content))
    with pytest.raises(ProgramError, match="does not match its sha256"):
        load_program(archive(), sha256="0" * 64)
    (tmp_path / "dir.pt2").mkdir()
    with pytest.raises(ProgramError, match="is not a regular file"):
        load_program(tmp_path / "dir.pt2")
