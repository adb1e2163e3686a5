"""Load a ``.pt2`` archive (``torch.export.save``) that may come from anyone, without running its code.

``torch.export.load`` trusts its input: it unpickles weights and constants whose archive config says
``use_pickle`` (and sample inputs that the restricted unpickler refuses, after retrying without the
restriction), loads AOTInductor shared libraries, evaluates symbolic shape expressions with sympy
(``eval``), compiles the archive's guard code into Python, and lets the graph call any function
under ``torch``. :func:`check_archive` reads the archive first and refuses all of that: it accepts
what ``torch.export.save`` writes for a program with static shapes whose graph calls ATen operators
(none of those that read or write files) and ``operator.getitem``, with every weight and constant
stored as raw tensor bytes. :func:`load_program` reads the file once, checks its sha256 when given,
checks the archive and loads those same bytes, so the file cannot change in between.

Example::

    >>> import io, tempfile, torch, zipfile
    >>> from torch import nn
    >>> from lightning_shifter.pt2 import ProgramError, load_program
    >>> program = torch.export.export(nn.Linear(4, 2).eval(), (torch.randn(1, 4),))
    >>> path = tempfile.mkdtemp() + "/model.pt2"
    >>> torch.export.save(program, path)
    >>> load_program(path).module()(torch.ones(1, 4)).shape
    torch.Size([1, 2])
    >>> archive = zipfile.ZipFile(path)  # a copy whose weights config asks for pickle
    >>> crafted = io.BytesIO()
    >>> with zipfile.ZipFile(crafted, "w") as out:
    ...     for item in archive.infolist():
    ...         data = archive.read(item)
    ...         if item.filename.endswith("model_weights_config.json"):
    ...             data = data.replace(b'"use_pickle": false', b'"use_pickle": true')
    ...         out.writestr(item, data)
    >>> load_program(crafted.getvalue(), what="the crafted copy")
    Traceback (most recent call last):
        ...
    lightning_shifter.pt2.ProgramError: the crafted copy: ... asks to unpickle weight '...' ...
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from lightning_shifter.portfolio import PortfolioError

MAX_ARCHIVE_BYTES = 16 << 30
_MAX_JSON_BYTES = 256 << 20  # a graph description, not weights
# ATen operators that touch files or the terminal: a model has no use for them
_REFUSED_OPS = {"from_file", "save", "_print"}
_TARGET = re.compile(r"torch\.ops\.aten\.(?P<op>[A-Za-z0-9_]+)\.[A-Za-z0-9_]+|_operator\.getitem")
# files of an archive, below its root folder, that the loader reads besides the per-model ones
_FIXED_FILES = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}


class ProgramError(PortfolioError):
    """A ``.pt2`` archive that is refused (it asks for pickle or code execution) or cannot be read."""


def load_program(source: str | os.PathLike | bytes, *, sha256: str | None = None, what: str | None = None) -> Any:
    """Read, check (:func:`check_archive`) and load a ``.pt2`` archive; returns the ``ExportedProgram``.

    Args:
        source: the archive's path, or its bytes.
        sha256: the digest the bytes must have (a portfolio manifest's), checked on the bytes loaded.
        what: how errors name the archive (default: its path).

    Raises:
        ProgramError: the file is not a regular file, does not match ``sha256``, is refused, or
            torch cannot load it.
    """
    import torch

    what = what or (str(source) if not isinstance(source, bytes) else "the archive")
    data = source if isinstance(source, bytes) else _read(Path(source), what)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ProgramError(f"{what}: the .pt2 does not match its sha256 in the manifest: the file is corrupt or was "
                           "tampered with; recreate the variant (lightning-shifter compact, or the Compaction callback)")
    check_archive(data, what)
    try:
        return torch.export.load(io.BytesIO(data))
    except Exception as err:  # torch raises many types for damaged archives
        raise ProgramError(f"{what}: torch.export.load cannot read the archive ({type(err).__name__}: "
                           f"{_first_line(err)}); save the program again with torch.export.save") from None


def check_archive(data: bytes, what: str = "the archive") -> None:
    """Refuse a ``.pt2`` archive that asks torch to unpickle, run native or Python code, or read files.

    Raises:
        ProgramError: naming the first entry that is refused, or what makes the archive unreadable.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise ProgramError(f"cannot load {what}: it is not a .pt2 archive (a zip file written by torch.export.save): {err}") from None
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any(PurePosixPath(n).is_absolute() or ".." in n.split("/") or "/" not in n for n in names):
        raise ProgramError(f"{what}: a .pt2 archive holds one root folder and relative paths only")
    root = roots.pop() + "/"
    files = {name[len(root):] for name in names if not name.endswith("/")}
    models = sorted(f[len("models/"):-len(".json")] for f in files
                    if f.startswith("models/") and f.endswith(".json") and f.count("/") == 1)
    if not models:
        raise ProgramError(f"{what}: the archive holds no models/<name>.json: it was not written by torch.export.save")
    expected = set(_FIXED_FILES)
    for model in models:
        expected |= {f"models/{model}.json", f"data/sample_inputs/{model}.pt"}
        expected |= _checked_payloads(archive, root, model, "weights", what)
        expected |= _checked_payloads(archive, root, model, "constants", what)
        _check_graph(_json(archive, root + f"models/{model}.json", what), f"{what} (model {model!r})")
        _check_sample_inputs(archive, root + f"data/sample_inputs/{model}.pt", what)
    unexpected = sorted(f for f in files - expected if not f.startswith("extra/"))  # extra files: plain text
    if unexpected:
        kind = "native code (AOTInductor)" if any(f.startswith("data/aotinductor/") for f in unexpected) else "entries"
        raise ProgramError(f"{what}: the archive holds {kind} this loader does not accept: {', '.join(unexpected[:5])}"
                           "; only programs saved by torch.export.save are loaded")


def _checked_payloads(archive: zipfile.ZipFile, root: str, model: str, kind: str, what: str) -> set[str]:
    """The raw tensor files a weights or constants config lists, after refusing pickled entries."""
    config_file = f"data/{kind}/{model}_{kind}_config.json"
    if root + f"data/{kind}/{model}.pt" in archive.namelist():
        raise ProgramError(f"{what}: the archive stores its {kind} in the legacy pickled format; save the program "
                           "again with this torch's torch.export.save")
    config = _json(archive, root + config_file, what)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ProgramError(f"{what}: {config_file} is not a payload config")
    singular = kind[:-1]
    files = {config_file}
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise ProgramError(f"{what}: {config_file} asks to unpickle {singular} {fqn!r} (use_pickle); torch.export.load "
                               "would run arbitrary code from it, so the archive is refused")
        path_name = meta.get("path_name")
        prefix = "weight_" if kind == "weights" else "tensor_"
        if not isinstance(path_name, str) or not re.fullmatch(prefix + r"\d+", path_name):
            raise ProgramError(f"{what}: {config_file} stores {singular} {fqn!r} as {path_name!r}, which is not raw "
                               "tensor data (custom or opaque objects are unpickled by torch)")
        files.add(f"data/{kind}/{path_name}")
    return files


def _check_graph(program: Any, what: str) -> None:
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise ProgramError(f"{what}: the model description is not a serialized ExportedProgram")
    graph = program["graph_module"].get("graph")
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise ProgramError(f"{what}: the model description has no graph")
    if program.get("guards_code") or program.get("range_constraints"):
        raise ProgramError(f"{what}: the program has guard code or dynamic shapes, which torch compiles or evaluates as "
                           "Python when loading; export with static shapes")
    if any(graph.get(key) for key in ("sym_int_values", "sym_float_values", "sym_bool_values", "custom_obj_values")):
        raise ProgramError(f"{what}: the program holds symbolic values or custom objects; export with static shapes "
                           "and plain tensors")
    stack: list[Any] = [program]
    while stack:  # symbolic expressions anywhere are parsed by sympy, which evaluates them
        value = stack.pop()
        if isinstance(value, dict):
            if "as_expr" in value or "expr_str" in value:
                raise ProgramError(f"{what}: the program holds a symbolic shape expression, which torch evaluates "
                                   "as Python when loading; export with static shapes")
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    for node in graph["nodes"]:
        target = node.get("target") if isinstance(node, dict) else None
        match = _TARGET.fullmatch(target) if isinstance(target, str) else None
        if match is None or match["op"] in _REFUSED_OPS:
            raise ProgramError(f"{what}: the graph calls {target!r}; only ATen operators (none that touch files) and "
                               "getitem are loaded")


def _check_sample_inputs(archive: zipfile.ZipFile, name: str, what: str) -> None:
    """torch retries sample inputs without the restricted unpickler when it fails: make sure it does not."""
    import torch

    try:
        raw = archive.read(name)
    except KeyError:
        raise ProgramError(f"{what}: the archive has no sample inputs ({name})") from None
    if raw:
        try:
            torch.load(io.BytesIO(raw), weights_only=True)
        except Exception as err:
            raise ProgramError(f"{what}: its sample inputs hold more than tensors ({_first_line(err)}); torch would "
                               "unpickle them without restriction, so the archive is refused") from None


def _json(archive: zipfile.ZipFile, name: str, what: str) -> Any:
    try:
        info = archive.getinfo(name)
        if info.file_size > _MAX_JSON_BYTES:
            raise ProgramError(f"{what}: {name} is larger than {_MAX_JSON_BYTES} bytes")
        return json.loads(archive.read(info))
    except KeyError:
        raise ProgramError(f"{what}: the archive lacks {name}") from None
    except (ValueError, RecursionError, zipfile.BadZipFile, OSError) as err:
        raise ProgramError(f"{what}: {name} is unreadable ({type(err).__name__}: {_first_line(err)})") from None


def _read(path: Path, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise ProgramError(f"{what}: cannot open {path} ({err.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ProgramError(f"{what}: {path} is not a regular file")
        if info.st_size > MAX_ARCHIVE_BYTES:
            raise ProgramError(f"{what}: {path} is larger than {MAX_ARCHIVE_BYTES} bytes")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        return f.read()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
