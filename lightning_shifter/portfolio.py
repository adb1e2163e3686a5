"""The portfolio directory: the one contract between the training side and the deployment side.

A portfolio is a folder holding ``manifest.json`` and one sub-folder per variant::

    portfolio/
      manifest.json
      round-03/model.pt2         torch.export program of the compacted model
      round-03/model.pte         ExecuTorch program, fp32, XNNPACK
      round-03/model_int8.pte    optional int8 program

This module has no dependency on Lightning or on training code (torch is imported only to load a
``.pt2``), so deployment code can read portfolios anywhere.

Writes are atomic: every file is written to a temporary name in its final folder and renamed into
place, and the manifest is rewritten (atomically too) only after a variant's files are complete, so
a crash never leaves a listed variant whose files are missing or half written. A write is checked
before it happens: a variant folder that is a symbolic link is refused, and the manifest is
validated before it is saved. Temporary files of writers that were killed are removed by the next
writer (:meth:`Portfolio.remove_stale_temporaries`). Files get the usual permissions (``0666``
less the umask), so a shared portfolio stays readable to others.

A portfolio is untrusted input. Readers validate the manifest against its schema (every field any
command uses: types, ranges, sizes; see :mod:`lightning_shifter.schema`), every path (it must stay
inside the folder), and each file's size and sha256.

Example::

    >>> import tempfile
    >>> from lightning_shifter.portfolio import Portfolio, Variant
    >>> root = tempfile.mkdtemp()
    >>> p = Portfolio.create(root, input_shape=(1, 1, 8, 8))
    >>> entry = p.write_file("round-00", "fp32", b"program bytes")
    >>> p.put_variant(Variant(name="round-00", round=0, density=1.0, params=10, macs=100,
    ...                       files={"fp32": entry}, metrics={"val_acc_compacted": 0.9}))
    >>> [v.name for v in Portfolio.open(root).variants]
    ['round-00']
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from lightning_shifter.errors import ShifterError
from lightning_shifter.schema import (
    SchemaError,
    anything,
    boolean,
    check_json,
    integer,
    listing,
    mapping,
    number,
    read_json,
    record,
    text,
)

#: The manifest version this package writes. Version 1 (before provenance left the timings: see
#: :func:`upgrade_manifest`) is read too.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
#: The precisions a variant's ExecuTorch programs come in (a file role each; the native runner's
#: ``--precision`` takes the same names).
PRECISIONS = ("fp32", "int8")
# role -> file name inside the variant's folder: the torch.export program, then one per precision
FILE_NAMES = {"pt2": "model.pt2", "fp32": "model.pte", "int8": "model_int8.pte"}
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
#: The input dtypes a portfolio may declare (the Python side runs them all; the native runner feeds
#: float32 only and refuses a portfolio of another dtype when it starts).
INPUT_DTYPES = ("float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64")
#: Which variants a portfolio keeps as rounds arrive (see :func:`keep_decision`).
KEEP_POLICIES = ("all", "distinct", "pareto")
# what every reader (the native runner included) can allocate and index: 1 to 8 dimensions of at
# most 2^24 each, 2^26 elements in all (256 MiB of float32)
MAX_INPUT_RANK, MAX_INPUT_DIM, MAX_INPUT_ELEMENTS = 8, 1 << 24, 1 << 26
MAX_VARIANTS = 4096
# temporary files: ".<final name>.<writer's pid>.<random>.tmp" (older writers: ".<final name>.<random>.tmp")
_TEMPORARY = re.compile(r"\.(?P<final>.+?)\.(?:(?P<pid>\d+)\.)?[A-Za-z0-9_]{8,}\.tmp")
_LEGACY_TEMPORARY_AGE_S = 3600.0  # a temporary without a pid is stale once this old


class PortfolioError(ShifterError):
    """A portfolio directory or manifest that cannot be used as it is."""


def validate_variant_name(name: str) -> str:
    """Return ``name`` if it is usable as a folder name and a shell word, else raise."""
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise PortfolioError(
            f"invalid variant name {name!r}: use 1-64 characters from letters, digits, '.', '_' "
            "and '-', starting with a letter or digit"
        )
    return name


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through a synced temporary file in its folder, then rename it into place.

    ``data`` is the bytes, or a function that writes them to a binary file object. Readers see the
    old file or the new one, never a partial one; a failure leaves no temporary file behind (a
    kill does: :meth:`Portfolio.remove_stale_temporaries` removes it later). The file gets mode
    ``0666`` less the umask, like any file the user creates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _sync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class FileEntry:
    """One file of a variant: its path relative to the portfolio root, size and sha256."""

    path: str
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str) -> FileEntry:
        if not isinstance(data, dict):
            raise PortfolioError(f"{where}: expected an object with path, bytes and sha256")
        path, size, digest = data.get("path"), data.get("bytes"), data.get("sha256")
        if not isinstance(path, str) or len(path) > 4096:
            raise PortfolioError(f"{where}.path: expected a relative path string, got {_short(path)}")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= 2**63 - 1:
            raise PortfolioError(f"{where}.bytes: expected a non-negative integer, got {_short(size)}")
        if not isinstance(digest, str) or not _SHA256_PATTERN.fullmatch(digest):
            raise PortfolioError(f"{where}.sha256: expected 64 lowercase hex digits, got {_short(digest)}")
        _check_relative_path(path, where)
        return cls(path=path, bytes=size, sha256=digest)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: The metric an exported program's validation accuracy is recorded under, per precision.
PROGRAM_ACCURACIES = {precision: f"val_acc_{precision}" for precision in PRECISIONS}
# the accuracies this package records and reads (Variant.accuracy, the switching policies)
ACCURACY_METRICS = ("val_acc_sparse", "val_acc_compacted", *PROGRAM_ACCURACIES.values())


def _metrics(value: Any, where: str) -> dict[str, float]:
    """Numbers by name (a training run's own metrics among them); the package's accuracies are
    fractions in [0, 1]."""
    checked = mapping(text(128), number())(value, where)
    for key in ACCURACY_METRICS:
        if key in checked and not 0 <= checked[key] <= 1:
            raise SchemaError(f"{where}.{key}: an accuracy is a fraction from 0 to 1, got {checked[key]!r}")
    return checked


_MEASURE_MAX = 1e12  # any time (ms, us), memory (KiB) or ratio recorded; arithmetic on it cannot overflow
_MS = number(low=0.0, high=_MEASURE_MAX)
_COUNT = integer()
_TIMING = record({"load_ms": _MS, "p50_ms": _MS, "p90_ms": _MS})  # host timings per precision
_PROGRAM = record({  # where an exported program comes from (provenance), per precision
    "source_sha256": text(64, _SHA256_PATTERN),  # the model.pt2 it was exported from
    "portable_ops": listing(text(256)),  # ops XNNPACK left to ExecuTorch's portable kernels
})
_DEVICE_TIMING = record({  # a variant measured on a device (lightning_shifter.device.VariantBench)
    **{key: number(low=0.0, high=_MEASURE_MAX, nullable=True) for key in (
        "load_ms", "first_infer_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "reload_ms", "reload_first_infer_ms",
        "switch_us", "switch_speedup", "alone_rss_kb", "alone_peak_rss_kb")},
})
_FACTS = mapping(text(256), anything)
_DEVICE_ID = text(256)
_LAYER = record({
    "name": text(1024), "kind": text(256), "kept_constant_reason": text(nullable=True), "normalization": boolean,
    **{key: _COUNT for key in ("channels_before", "channels_after", "inputs_before", "inputs_after", "removed_zero",
                               "removed_unused", "removed_folded", "kept_constant", "placeholders")},
}, required=("name", "kind", "channels_before", "channels_after"))
#: The checks of a variant's fields besides name, round, density, params, macs and files.
VARIANT_FIELDS = {
    "metrics": _metrics,
    "exactness_error": number(low=0.0, nullable=True),  # absolute: as large as the outputs may be
    "compaction": record({  # CompactionReport.summary()
        **{key: _COUNT for key in ("params_before", "params_after", "macs_before", "macs_after", "channels_before",
                                   "channels_after", "kept_constant", "placeholders", "iterations")},
        "removed": mapping(text(64), _COUNT), "seconds": _MS, "timings": mapping(text(128), _MS),
        "max_abs_error": number(low=0.0), "float64_error": number(low=0.0, nullable=True),
        "unsupported": listing(text(1024)), "layers": listing(_LAYER),
    }),
    "programs": mapping(text(64), _PROGRAM),
    "host": mapping(text(64), _TIMING),
    "devices": mapping(_DEVICE_ID, record({"facts": _FACTS}, others=_DEVICE_TIMING)),
}
#: The checks of the manifest's top-level fields besides schema_version, input and variants.
TOP_LEVEL_FIELDS = {
    "generator": text(256),
    "devices": mapping(_DEVICE_ID, record({"facts": _FACTS}, others=record({  # whole-portfolio memory per precision
        **{key: _MS for key in ("portfolio_rss_kb", "portfolio_peak_rss_kb", "dense_rss_kb", "dense_peak_rss_kb",
                                "ratio", "peak_ratio")},
        "dense": text(64, _NAME_PATTERN), "variants": _COUNT,
    }))),
}


@dataclass
class Variant:
    """One model of the portfolio and everything measured about it.

    ``density`` is nonzero / original prunable weights of the sparse model it came from; ``params``
    and ``macs`` describe the compacted model. ``metrics`` holds accuracies such as
    ``val_acc_sparse``, ``val_acc_compacted`` and ``val_acc_int8``; ``programs`` says where each
    exported program comes from (``source_sha256``: the ``model.pt2`` it was exported from;
    ``portable_ops``) per precision; ``host`` and ``devices`` hold latency and memory measurements per
    precision (``devices`` keyed by device id), which can be dropped without losing that provenance.

    Example::

        >>> from lightning_shifter.portfolio import Variant
        >>> v = Variant(name="round-02", round=2, density=0.64, params=1200, macs=45000,
        ...             metrics={"val_acc_sparse": 0.97, "val_acc_compacted": 0.96})
        >>> v.accuracy  # the compacted model's, when known
        0.96
        >>> Variant.from_json(v.to_json(), "manifest.json: variants[0]") == v
        True
        >>> Variant(name="../elsewhere", round=0, density=1.0, params=1, macs=1)
        Traceback (most recent call last):
            ...
        lightning_shifter.portfolio.PortfolioError: invalid variant name '../elsewhere': use 1-64 characters ...
    """

    name: str
    round: int
    density: float
    params: int
    macs: int
    files: dict[str, FileEntry] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    exactness_error: float | None = None
    compaction: dict[str, Any] = field(default_factory=dict)
    programs: dict[str, Any] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_variant_name(self.name)

    @property
    def accuracy(self) -> float | None:
        """The best-known accuracy of the deployed model: compacted, else sparse."""
        for key in ("val_acc_compacted", "val_acc_sparse"):
            if key in self.metrics:
                return float(self.metrics[key])
        return None

    def program_accuracy(self, precision: str) -> float | None:
        """The accuracy of the variant's ``precision`` program, what switching policies rank it by:
        measured on that program (``val_acc_<precision>``, when it was exported with validation data),
        else for fp32 :attr:`accuracy` (the fp32 program computes the compacted model's function);
        None where unknown.

        Example::

            >>> from lightning_shifter.portfolio import Variant
            >>> v = Variant("round-02", round=2, density=0.64, params=1200, macs=45000,
            ...             metrics={"val_acc_compacted": 0.96, "val_acc_int8": 0.95})
            >>> v.program_accuracy("fp32"), v.program_accuracy("int8")
            (0.96, 0.95)
        """
        measured = self.metrics.get(PROGRAM_ACCURACIES.get(precision, ""))
        if measured is not None:
            return float(measured)
        return self.accuracy if precision == "fp32" else None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["files"] = {role: entry.to_json() for role, entry in self.files.items()}
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> Variant:
        if not isinstance(data, dict):
            raise PortfolioError(f"{where}: expected an object")
        known = {f.name for f in dataclasses.fields(cls)}
        required = ("name", "round", "density", "params", "macs")
        missing = [key for key in required if key not in data]
        if missing:
            raise PortfolioError(f"{where}: missing field(s) {', '.join(missing)}")
        name = data["name"]
        try:
            validate_variant_name(name)
        except PortfolioError as err:
            raise PortfolioError(f"{where}: {err}") from None
        files_data = data.get("files", {})
        if not isinstance(files_data, dict):
            raise PortfolioError(f"{where}.files: expected an object mapping role to file")
        unknown_roles = sorted(set(files_data) - set(FILE_NAMES))
        if unknown_roles:
            raise PortfolioError(
                f"{where}.files: unknown role(s) {unknown_roles}; known roles are {sorted(FILE_NAMES)}"
            )
        files = {role: FileEntry.from_json(entry, f"{where}.files.{role}") for role, entry in files_data.items()}
        for key, high in (("round", 2**31 - 1), ("params", 2**63 - 1), ("macs", 2**63 - 1)):
            value = data[key]
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
                raise PortfolioError(f"{where}.{key}: expected a non-negative integer up to {high}, got {_short(value)}")
        density = data["density"]
        if (not isinstance(density, (int, float)) or isinstance(density, bool) or not math.isfinite(density)
                or not 0.0 <= density <= 1.0):
            raise PortfolioError(f"{where}.density: expected a number in [0, 1], got {_short(density)}")
        fields = {key: value for key, value in data.items() if key in known}
        try:
            for key, check in VARIANT_FIELDS.items():
                if key in fields:
                    fields[key] = check(fields[key], f"{where}.{key}")
        except SchemaError as err:
            raise PortfolioError(str(err)) from None
        fields["files"] = files
        return cls(**fields)


def upgrade_manifest(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 manifest as version 2 (a new dict; ``data`` is left as it is).

    Version 1 kept an exported program's provenance (``source_sha256``, ``portable_ops``) inside its host
    timings, ``host[precision]``; version 2 keeps it in ``programs[precision]``, so that timings can be
    dropped or measured again without losing where a program comes from. Everything else is the same.
    Entries that are not what version 1 wrote are left for the schema checks to name.

    Example::

        >>> from lightning_shifter.portfolio import upgrade_manifest
        >>> old = {"schema_version": 1, "variants": [{"name": "round-00", "host": {"fp32": {
        ...     "p50_ms": 0.2, "source_sha256": "ab" * 32, "portable_ops": ["aten.cumsum.default"]}}}]}
        >>> new = upgrade_manifest(old)
        >>> new["schema_version"], new["variants"][0]["host"], new["variants"][0]["programs"]["fp32"]["portable_ops"]
        (2, {'fp32': {'p50_ms': 0.2}}, ['aten.cumsum.default'])
    """
    upgraded = {**data, "schema_version": 2}
    for key in ("variants", "skipped"):
        entries = data.get(key)
        if isinstance(entries, list):
            upgraded[key] = [_upgrade_variant(entry) for entry in entries]
    return upgraded


def _upgrade_variant(entry: Any) -> Any:
    host = entry.get("host") if isinstance(entry, dict) else None
    if not isinstance(host, dict) or "programs" in entry:  # not what version 1 wrote: leave it to the checks
        return entry
    timings, programs = {}, {}
    for precision, measured in host.items():
        if isinstance(measured, dict):
            provenance = {k: measured[k] for k in ("source_sha256", "portable_ops") if k in measured}
            if provenance:
                programs[precision] = provenance
            measured = {k: v for k, v in measured.items() if k not in provenance}
        timings[precision] = measured
    return {**entry, "host": timings, "programs": programs}


@dataclass
class Skipped:
    """A variant that was measured but is not in the portfolio, and why (the keep policy dropped it).

    ``variant`` holds what was measured (no files); ``reason`` names the variant that made it
    redundant.
    """

    variant: Variant
    reason: str

    def to_json(self) -> dict[str, Any]:
        data = self.variant.to_json()
        del data["files"]
        return {**data, "reason": self.reason}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Skipped:
        if not isinstance(data, dict) or not isinstance(data.get("reason"), str) or len(data["reason"]) > 4096:
            raise PortfolioError(f"{where}: expected an object with a 'reason' text (at most 4096 characters)")
        fields = {k: v for k, v in data.items() if k not in ("reason", "files")}
        return cls(Variant.from_json(fields, where), data["reason"])


@dataclass
class KeepDecision:
    """What a keep policy decided for a new variant: ``keep`` it or not (``reason`` says why not), and
    which kept variants it ``replaces`` (name -> why; they are to be removed)."""

    keep: bool
    reason: str = ""
    replaces: dict[str, str] = field(default_factory=dict)


def keep_decision(variants: Sequence[Variant], candidate: Variant, policy: str = "pareto") -> KeepDecision:
    """Whether a portfolio holding ``variants`` should keep ``candidate``, under ``policy``.

    * ``"all"``: every variant is kept.
    * ``"distinct"``: one variant per compacted size (``params``): of two the same size, the more
      accurate (``Variant.accuracy``) stays; on equal or unknown accuracy the one already kept stays.
      Iterative pruning makes many same-size variants before compaction starts to pay; they cost
      disk and memory and add nothing.
    * ``"pareto"``: the accuracy / size Pareto front: a variant stays unless another is at least as
      accurate with no more parameters and MACs, plus the most accurate full-size variant (one that
      compaction did not shrink: ``params == compaction["params_before"]``), kept as the reference
      the others are compared with. A variant without accuracy is judged by size alone, as under
      ``"distinct"``.

    A variant of the same name as ``candidate`` is ignored (the candidate replaces it anyway).

    Example::

        >>> from lightning_shifter.portfolio import Variant, keep_decision
        >>> def v(name, params, acc):
        ...     return Variant(name, round=int(name[-2:]), density=1.0, params=params, macs=params,
        ...                    metrics={"val_acc_compacted": acc})
        >>> kept = [v("round-00", 1000, 0.97), v("round-01", 1000, 0.98)]
        >>> keep_decision(kept[:1], kept[1], "distinct")
        KeepDecision(keep=True, reason='', replaces={'round-00': 'round-01 has the same size (1000 params) and is more accurate (0.9800 vs 0.9700)'})
        >>> keep_decision(kept[1:], v("round-02", 1000, 0.96), "distinct").reason
        'round-01 has the same size (1000 params) and is more accurate (0.9800 vs 0.9600)'
        >>> list(keep_decision(kept[1:], v("round-03", 400, 0.99), "pareto").replaces)
        ['round-01']
    """
    if policy not in KEEP_POLICIES:
        raise ValueError(f"unknown keep policy {policy!r}; use one of {KEEP_POLICIES}")
    if policy == "all":
        return KeepDecision(True)
    others = [v for v in variants if v.name != candidate.name]
    for other in others:  # an equal variant already kept wins
        reason = _makes_redundant(other, candidate, policy)
        if reason is not None:
            return KeepDecision(False, reason=reason)
    reasons = {other.name: _makes_redundant(candidate, other, policy) for other in others}
    return KeepDecision(True, replaces={name: reason for name, reason in reasons.items() if reason is not None})


def _makes_redundant(a: Variant, b: Variant, policy: str) -> str | None:
    """Why variant ``a`` makes ``b`` redundant under ``policy``, or None if it does not."""
    if a.params == b.params:
        if a.accuracy is None or b.accuracy is None:
            return f"{a.name} has the same size ({a.params} params); accuracies unknown, the first one stays"
        if a.accuracy < b.accuracy:
            return None
        better = "more accurate" if a.accuracy > b.accuracy else "as accurate"
        return f"{a.name} has the same size ({a.params} params) and is {better} ({a.accuracy:.4f} vs {b.accuracy:.4f})"
    full_size = b.params == b.compaction.get("params_before")
    if (policy == "pareto" and not full_size and a.params < b.params and a.macs <= b.macs
            and a.accuracy is not None and b.accuracy is not None and a.accuracy >= b.accuracy):
        return (f"{a.name} is smaller ({a.params} < {b.params} params, {a.macs} <= {b.macs} MACs) and at least "
                f"as accurate ({a.accuracy:.4f} vs {b.accuracy:.4f})")
    return None


@dataclass
class Headline:
    """The smallest variant that kept the best accuracy of the run, against the dense model.

    ``dense_params`` and ``dense_accuracy`` describe round 0, the dense model; ``best_accuracy`` is the
    best accuracy of any round (kept or skipped), the reference: ``variant`` is the smallest variant
    whose accuracy is within ``max_accuracy_drop`` of it (so also of the dense model's, which is never
    higher). ``size_ratio`` = dense params / its params; ``latency_ratio`` = host fp32 p50 of the
    full-size program (the largest variant, when it has the dense model's parameter count) / its p50,
    or None where either is unmeasured.
    """

    variant: Variant
    dense_params: int
    dense_accuracy: float
    best_accuracy: float
    size_ratio: float
    macs_ratio: float | None
    latency_ratio: float | None
    dense_program: str | None

    def text(self) -> str:
        """One line for people: size, latency and accuracy against dense."""
        accuracy = self.variant.accuracy or 0.0
        latency = f", {self.latency_ratio:.2f}x faster (host fp32)" if self.latency_ratio is not None else ""
        return (f"{self.variant.name}: {self.size_ratio:.2f}x smaller than dense ({self.variant.params:,} vs "
                f"{self.dense_params:,} params){latency}, accuracy {100 * accuracy:.1f}% (dense "
                f"{100 * self.dense_accuracy:.1f}%, best round {100 * self.best_accuracy:.1f}%)")


def headline(portfolio: Portfolio, max_accuracy_drop: float = 0.01) -> Headline | None:
    """The portfolio's :class:`Headline`, or None without round 0's accuracy or a variant close enough.

    Example::

        >>> import tempfile
        >>> from lightning_shifter.portfolio import Portfolio, Variant, headline
        >>> p = Portfolio.create(tempfile.mkdtemp(), input_shape=(1, 4))
        >>> for r, (params, acc, ms) in enumerate([(1000, 0.96, 2.0), (200, 0.965, 0.5), (50, 0.90, 0.2)]):
        ...     p.put_variant(Variant(f"round-{r:02d}", r, 0.5 ** r, params, 10 * params,
        ...                           metrics={"val_acc_compacted": acc}, host={"fp32": {"p50_ms": ms}},
        ...                           compaction={"params_before": 1000}))
        >>> headline(p).text()
        'round-01: 5.00x smaller than dense (200 vs 1,000 params), 4.00x faster (host fp32), accuracy 96.5% (dense 96.0%, best round 96.5%)'
    """
    rounds = {v.round: v for v in [*(s.variant for s in portfolio.skipped), *portfolio.variants]}
    dense = rounds.get(0)
    if dense is None or dense.accuracy is None:
        return None
    dense_params = int(dense.compaction.get("params_before", dense.params))
    best_accuracy = max(v.accuracy for v in rounds.values() if v.accuracy is not None)
    close = [v for v in portfolio.variants
             if v.accuracy is not None and v.accuracy >= best_accuracy - max_accuracy_drop]
    if not close:
        return None
    best = min(close, key=lambda v: (v.params, -(v.accuracy or 0.0), v.round))
    largest = max(portfolio.variants, key=lambda v: (v.params, v.accuracy or 0.0))
    reference = largest if largest.params == dense_params else None
    latency = None
    if reference is not None:
        ms = [v.host.get("fp32", {}).get("p50_ms") for v in (reference, best)]
        if all(isinstance(m, (int, float)) and m > 0 for m in ms):
            latency = ms[0] / ms[1]
    macs = dense.macs / best.macs if dense.macs and best.macs else None
    return Headline(best, dense_params, float(dense.accuracy), float(best_accuracy), dense_params / best.params,
                    macs, latency, None if reference is None else reference.name)


class Portfolio:
    """A portfolio directory: read with :meth:`open`, start with :meth:`create`.

    Single writer: one process at a time updates a portfolio's manifest (parallel exporters write
    their files with :meth:`write_file` and let one process record them).

    Example::

        >>> import tempfile
        >>> from lightning_shifter.portfolio import Portfolio, Variant
        >>> p = Portfolio.create(tempfile.mkdtemp(), input_shape=(1, 1, 8, 8))
        >>> for r, (params, acc) in enumerate([(1000, 0.97), (400, 0.96), (300, 0.90), (500, 0.95)]):
        ...     p.put_variant(Variant(f"round-{r:02d}", round=r, density=0.8 ** r, params=params,
        ...                           macs=100 * params, metrics={"val_acc_compacted": acc}))
        >>> p = Portfolio.open(p.root)  # validates the manifest and every listed file
        >>> p.names, len(p), "round-03" in p
        (['round-00', 'round-01', 'round-02', 'round-03'], 4, True)
        >>> [v.name for v in p.pareto_front()]  # round-03 is bigger and less accurate than round-01
        ['round-00', 'round-01', 'round-02']
        >>> p["round-01"].accuracy
        0.96
        >>> p["round-09"]
        Traceback (most recent call last):
            ...
        lightning_shifter.portfolio.PortfolioError: no variant named 'round-09' in ...; known variants: round-00, ...
    """

    def __init__(self, root: str | os.PathLike, input_shape: Sequence[int], input_dtype: str = "float32",
                 variants: Sequence[Variant] = (), extra: dict[str, Any] | None = None,
                 skipped: Sequence[Skipped] = ()) -> None:
        self.root = Path(root)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.input_dtype = input_dtype
        self._variants: dict[str, Variant] = {}
        self._skipped: dict[str, Skipped] = {entry.variant.name: entry for entry in skipped}
        self.extra = dict(extra or {})
        for variant in variants:
            self._variants[variant.name] = variant

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, root: str | os.PathLike, input_shape: Sequence[int], input_dtype: str = "float32") -> Portfolio:
        """Create an empty portfolio, or open the existing one at ``root`` if its input matches."""
        root = Path(root)
        if (root / MANIFEST_NAME).exists():
            existing = cls.open(root, verify=False)
            if existing.input_shape != tuple(input_shape) or existing.input_dtype != input_dtype:
                raise PortfolioError(
                    f"{root} already holds a portfolio for input {list(existing.input_shape)} "
                    f"{existing.input_dtype}, not {list(input_shape)} {input_dtype}: choose another folder"
                )
            return existing
        if input_dtype not in INPUT_DTYPES:
            raise PortfolioError(f"unsupported input dtype {input_dtype!r}; use one of {INPUT_DTYPES}")
        problem = _input_shape_problem(list(input_shape))
        if problem:
            raise PortfolioError(f"input_shape {tuple(input_shape)!r}: {problem}")
        root.mkdir(parents=True, exist_ok=True)
        portfolio = cls(root, input_shape, input_dtype)
        portfolio.save()
        return portfolio

    @classmethod
    def open(cls, root: str | os.PathLike, verify: bool | str = True) -> Portfolio:
        """Read and validate a portfolio.

        Args:
            root: the portfolio directory.
            verify: ``True`` or ``"sha256"`` checks every listed file's size and sha256, ``"size"``
                only existence and size, ``False`` only the manifest itself.
        """
        root = Path(root)
        manifest_path = root / MANIFEST_NAME
        if not root.is_dir():
            raise PortfolioError(f"{root} is not a directory; pass the folder that holds {MANIFEST_NAME}")
        if not manifest_path.exists():
            raise PortfolioError(
                f"{manifest_path} does not exist: this is not a portfolio (create one with the Compaction "
                "callback or Portfolio.create)"
            )
        try:
            data = read_json(manifest_path)
        except SchemaError as err:
            raise PortfolioError(
                f"{manifest_path}: {err}; the file is corrupt or was tampered with: restore it or recreate the portfolio"
            ) from None
        portfolio = cls._from_json(root, data)
        if verify:
            portfolio.verify(sha256=verify is True or verify == "sha256")
        return portfolio

    @classmethod
    def _from_json(cls, root: Path, data: Any) -> Portfolio:
        where = str(root / MANIFEST_NAME)
        if not isinstance(data, dict):
            raise PortfolioError(f"{where}: expected a JSON object at the top level")
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS or not isinstance(version, int) or isinstance(version, bool):
            readable = " or ".join(str(v) for v in READABLE_VERSIONS)
            raise PortfolioError(
                f"{where}: schema_version {version!r} is not supported (this lightning-shifter reads "
                f"schema_version {readable}); use the lightning-shifter version that wrote it"
            )
        if version == 1:
            data = upgrade_manifest(data)
        spec = data.get("input")
        if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list):
            raise PortfolioError(f"{where}: 'input' must be an object with a 'shape' list of positive integers")
        problem = _input_shape_problem(spec["shape"])
        if problem:
            raise PortfolioError(f"{where}: input 'shape' {_short(spec['shape'])} is not usable: {problem}")
        dtype = spec.get("dtype", "float32")
        if dtype not in INPUT_DTYPES:
            raise PortfolioError(f"{where}: unsupported input dtype {_short(dtype)}")
        variants_data = data.get("variants", [])
        if not isinstance(variants_data, list) or len(variants_data) > MAX_VARIANTS:
            raise PortfolioError(f"{where}: 'variants' must be a list of at most {MAX_VARIANTS} variants")
        variants = [Variant.from_json(v, f"{where}: variants[{i}]") for i, v in enumerate(variants_data)]
        names = [v.name for v in variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise PortfolioError(f"{where}: duplicate variant name(s) {duplicates}")
        skipped_data = data.get("skipped", [])
        if not isinstance(skipped_data, list) or len(skipped_data) > MAX_VARIANTS:
            raise PortfolioError(f"{where}: 'skipped' must be a list of at most {MAX_VARIANTS} entries")
        skipped = [Skipped.from_json(s, f"{where}: skipped[{i}]") for i, s in enumerate(skipped_data)]
        extra = {k: v for k, v in data.items()
                 if k not in ("schema_version", "generator", "input", "variants", "skipped")}
        try:
            for key, check in TOP_LEVEL_FIELDS.items():
                if key in data:
                    check(data[key], f"{where}: {key}")
        except SchemaError as err:
            raise PortfolioError(str(err)) from None
        return cls(root, spec["shape"], dtype, variants, extra, skipped)

    # ------------------------------------------------------------------ reading
    @property
    def variants(self) -> list[Variant]:
        """Variants in round order (then by name)."""
        return sorted(self._variants.values(), key=lambda v: (v.round, v.name))

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    @property
    def skipped(self) -> list[Skipped]:
        """Variants measured but not kept (see :func:`keep_decision`), in round order, with the reason."""
        return sorted(self._skipped.values(), key=lambda s: (s.variant.round, s.variant.name))

    def __getitem__(self, name: str) -> Variant:
        try:
            return self._variants[name]
        except KeyError:
            raise PortfolioError(
                f"no variant named {name!r} in {self.root}; known variants: {', '.join(self.names) or 'none'}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._variants

    def __iter__(self) -> Iterator[Variant]:
        return iter(self.variants)

    def __len__(self) -> int:
        return len(self._variants)

    def file_path(self, name: str, role: str) -> Path:
        """Absolute path of a variant's file, checked to stay inside the portfolio."""
        variant = self[name]
        if role not in variant.files:
            raise PortfolioError(
                f"variant {name!r} has no {role!r} file (it has {sorted(variant.files) or 'none'}); "
                + ("export the portfolio first" if role in PRECISIONS else "recreate the variant")
            )
        return self._resolve(variant.files[role].path, f"variant {name!r} {role}")

    def verify(self, sha256: bool = True) -> None:
        """Check that every listed file exists with the recorded size (and sha256)."""
        for variant in self.variants:
            for role, entry in variant.files.items():
                self.verify_file(variant.name, role, sha256=sha256)

    def verify_file(self, name: str, role: str, sha256: bool = True) -> Path:
        """Check one listed file (a regular file with the recorded size, and sha256) and return its path."""
        entry = self[name].files.get(role)
        path = self.file_path(name, role)
        what = f"{path} (variant {name!r}, {role})"
        remedy = _REMEDIES[role]
        if not path.exists():
            raise PortfolioError(f"{what} is listed in the manifest but missing: {remedy}")
        if not path.is_file():
            raise PortfolioError(f"{what} is not a regular file: {remedy}")
        size = path.stat().st_size
        if size != entry.bytes:
            raise PortfolioError(
                f"{what} has {size} bytes, the manifest says {entry.bytes}: the file is truncated or was "
                f"replaced; {remedy}"
            )
        if sha256 and sha256_file(path) != entry.sha256:
            raise PortfolioError(f"{what} does not match its sha256 in the manifest: the file is corrupt or was "
                                 f"tampered with; {remedy}")
        return path

    def load_module(self, name: str) -> Any:
        """Load a variant's compacted model (``model.pt2``) as a runnable module, without pickle.

        The archive is checked before torch reads it (:func:`lightning_shifter.pt2.load_program`):
        one that asks for pickle, native code or anything beyond ATen operators is refused.
        """
        from lightning_shifter.pt2 import load_program

        entry = self[name].files.get("pt2")
        path = self.verify_file(name, "pt2", sha256=False)
        return load_program(path, sha256=entry.sha256, what=f"variant {name!r}").module()

    def pareto_front(self, costs: Sequence[str] = ("params", "macs")) -> list[Variant]:
        """Variants not dominated in (higher accuracy, lower ``costs``); those without accuracy are left out."""
        scored = [v for v in self.variants if v.accuracy is not None]

        def dominates(a: Variant, b: Variant) -> bool:
            no_worse = a.accuracy >= b.accuracy and all(getattr(a, c) <= getattr(b, c) for c in costs)
            better = a.accuracy > b.accuracy or any(getattr(a, c) < getattr(b, c) for c in costs)
            return no_worse and better

        return [v for v in scored if not any(dominates(o, v) for o in scored if o is not v)]

    # ------------------------------------------------------------------ writing
    def write_file(self, name: str, role: str, data: bytes | Callable[[BinaryIO], None]) -> FileEntry:
        """Atomically write one file of a variant and return its entry (the manifest is not touched).

        ``data`` is the file's bytes, or a function that writes them to a binary file object (e.g.
        ``lambda f: torch.export.save(program, f)``). The variant's folder must be a real directory
        inside the portfolio (a symbolic link is refused before anything is written).
        """
        target = self._writable_folder(name, create=True) / self._file_name(role)
        atomic_write(target, data)
        return FileEntry(path=f"{name}/{target.name}", bytes=target.stat().st_size, sha256=sha256_file(target))

    def delete_file(self, name: str, role: str) -> None:
        """Remove a variant's file at ``role`` if it is there (unlist it first: see :meth:`save`)."""
        if name in self and role in self[name].files:
            raise PortfolioError(f"variant {name!r} still lists its {role} file: unlist it and save the manifest "
                                 "before deleting the file")
        folder = self._writable_folder(name, create=False)
        if folder is not None:
            (folder / self._file_name(role)).unlink(missing_ok=True)

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporary files left by writers that were killed mid-write; returns what was removed.

        A temporary file names the process that writes it: it is stale once that process is gone
        (on this machine); one without a process id (older writers) once it is an hour old.
        """
        root = self.root.resolve()
        folders = [root] + [entry for entry in root.iterdir() if entry.is_dir() and not entry.is_symlink()]
        removed = []
        for folder in folders:
            for entry in folder.iterdir():
                match = _TEMPORARY.fullmatch(entry.name)
                if match is None or entry.is_symlink() or not entry.is_file():
                    continue
                pid = match["pid"]
                stale = (not _process_alive(int(pid))) if pid else (
                    time.time() - entry.stat().st_mtime > _LEGACY_TEMPORARY_AGE_S)
                if stale:
                    entry.unlink(missing_ok=True)
                    removed.append(entry)
        return removed

    def put_variant(self, variant: Variant) -> None:
        """Add or replace a variant (by name) and save the manifest; its files must already exist.

        A skipped entry of the same name is dropped: the variant is in the portfolio now. If the
        variant is refused (a missing file, a value readers would refuse) or the manifest cannot be
        saved, the portfolio keeps its previous entry, in memory and on disk.
        """
        previous = self._variants.get(variant.name)
        self._variants[variant.name] = variant
        try:
            for role in variant.files:
                self.verify_file(variant.name, role, sha256=False)
            self.save()
        except BaseException:
            if previous is None:
                del self._variants[variant.name]
            else:
                self._variants[variant.name] = previous
            raise
        self._skipped.pop(variant.name, None)
        self.save()

    def remove_variant(self, name: str, delete_files: bool = False, reason: str | None = None) -> None:
        """Unlist a variant and save the manifest.

        Its files stay until overwritten, unless ``delete_files``: then they are deleted after the
        manifest no longer lists them (a crash in between leaves unlisted files, never a listed
        variant without its files). With a ``reason`` the variant is recorded in :attr:`skipped`.
        """
        variant = self[name]  # clear error for an unknown name
        del self._variants[name]
        skipped = self._skipped.get(name)
        if reason is not None:
            self._skipped[name] = Skipped(dataclasses.replace(variant, files={}), reason)
        try:
            self.save()
        except BaseException:
            self._variants[name] = variant
            if skipped is None:
                self._skipped.pop(name, None)
            else:
                self._skipped[name] = skipped
            raise
        if delete_files:
            self._delete_files(variant)

    def admit(self, variant: Variant, policy: str, write_files: Callable[[], dict[str, FileEntry]]) -> KeepDecision:
        """Add ``variant`` under a keep ``policy`` (:func:`keep_decision`) and save the manifest.

        When the policy keeps it, ``write_files()`` writes its files (:meth:`write_file`) and returns
        their entries, the variant is listed, then the variants it makes redundant are removed (files
        included) and recorded in :attr:`skipped`. Otherwise nothing is written but its entry in
        :attr:`skipped`. A listed variant of the same name is unlisted first: a crash at any point
        leaves every listed variant with its files.

        Example::

            >>> import tempfile
            >>> from lightning_shifter.portfolio import Portfolio, Variant
            >>> p = Portfolio.create(tempfile.mkdtemp(), input_shape=(1, 4))
            >>> for r, acc in enumerate([0.90, 0.93, 0.92]):  # three rounds of the same size
            ...     v = Variant(f"round-{r:02d}", r, 0.8 ** r, 100, 100, metrics={"val_acc_compacted": acc})
            ...     _ = p.admit(v, "distinct", lambda: {"pt2": p.write_file(v.name, "pt2", b"program")})
            >>> p.names, [s.variant.name for s in p.skipped]
            (['round-01'], ['round-00', 'round-02'])
        """
        decision = keep_decision(self.variants, variant, policy)
        if variant.name in self:
            self.remove_variant(variant.name, delete_files=not decision.keep)
        if not decision.keep:
            self.skip_variant(variant, decision.reason)
            return decision
        variant.files.update(write_files())
        self.put_variant(variant)
        for name, reason in decision.replaces.items():
            self.remove_variant(name, delete_files=True, reason=reason)
        return decision

    def skip_variant(self, variant: Variant, reason: str) -> None:
        """Record ``variant`` (measured, not kept) in :attr:`skipped` with ``reason`` and save the manifest."""
        if variant.name in self._variants:
            raise PortfolioError(f"variant {variant.name!r} is in the portfolio: remove it instead of skipping it")
        self._skipped[variant.name] = Skipped(dataclasses.replace(variant, files={}), reason)
        self.save()

    def _delete_files(self, variant: Variant) -> None:
        for entry in variant.files.values():
            try:
                self._resolve(entry.path, f"variant {variant.name!r}").unlink(missing_ok=True)
            except (OSError, PortfolioError):
                pass  # an unlisted file that cannot go is harmless; it is overwritten if the name returns
        folder = self.root / variant.name
        if folder.is_dir() and not folder.is_symlink():
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty: files someone else put there stay

    def update_variant(self, name: str, **changes: Any) -> Variant:
        """Merge ``changes`` into a variant (dict fields are merged key by key) and save the manifest."""
        variant = self[name]
        merged = {}
        for key, value in changes.items():
            if not hasattr(variant, key):
                raise PortfolioError(f"Variant has no field {key!r}")
            current = getattr(variant, key)
            merged[key] = {**current, **value} if isinstance(current, dict) and isinstance(value, dict) else value
        updated = dataclasses.replace(variant, **merged)
        self.put_variant(updated)
        return updated

    def save(self) -> None:
        """Atomically rewrite ``manifest.json``, after checking it against the schema the readers apply."""
        from lightning_shifter import __version__

        data = {
            "schema_version": SCHEMA_VERSION,
            "generator": f"lightning-shifter {__version__}",
            "input": {"shape": list(self.input_shape), "dtype": self.input_dtype},
            **self.extra,
            "variants": [v.to_json() for v in self.variants],
        }
        if self._skipped:
            data["skipped"] = [entry.to_json() for entry in self.skipped]
        try:
            check_json(data, "")
            Portfolio._from_json(self.root, data)  # every field as a reader will check it
        except (SchemaError, PortfolioError) as err:
            raise PortfolioError(f"{self.root / MANIFEST_NAME} not saved: {err}") from None
        text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
        atomic_write(self._writable_root() / MANIFEST_NAME, text.encode("utf-8"))

    # ------------------------------------------------------------------ helpers
    def _resolve(self, relative: str, what: str) -> Path:
        _check_relative_path(relative, what)
        root = self.root.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise PortfolioError(f"{what}: path {relative!r} leaves the portfolio directory (through a link)")
        return path

    @staticmethod
    def _file_name(role: str) -> str:
        if role not in FILE_NAMES:
            raise PortfolioError(f"unknown file role {role!r}; known roles are {sorted(FILE_NAMES)}")
        return FILE_NAMES[role]

    def _writable_root(self) -> Path:
        root = self.root.resolve()
        if not root.is_dir():
            raise PortfolioError(f"{self.root} is not a directory; pass the folder that holds {MANIFEST_NAME}")
        return root

    def _writable_folder(self, name: str, create: bool) -> Path | None:
        """The variant's folder, checked to be a real directory directly inside the portfolio (the
        portfolio folder itself may be reached through a link; nothing below it may)."""
        validate_variant_name(name)
        folder = self._writable_root() / name
        try:
            mode = os.lstat(folder).st_mode
        except FileNotFoundError:
            if not create:
                return None
            folder.mkdir()
            mode = os.lstat(folder).st_mode
        if stat.S_ISLNK(mode):
            raise PortfolioError(
                f"{folder} is a symbolic link (to {os.readlink(folder)}): a variant folder must be a real directory "
                "inside the portfolio, so nothing is written through it; remove the link or choose another name"
            )
        if not stat.S_ISDIR(mode):
            raise PortfolioError(f"{folder} exists and is not a directory: remove it or choose another variant name")
        return folder

    def __repr__(self) -> str:
        return f"Portfolio({str(self.root)!r}, input={list(self.input_shape)} {self.input_dtype}, variants={self.names})"


_REMEDIES = {
    "pt2": "recreate the variant (lightning-shifter compact, or the Compaction callback)",
    "fp32": "re-export it (lightning-shifter export --force, or export_portfolio(..., force=True))",
    "int8": "re-export it (lightning-shifter export --precisions int8 --force, or export_portfolio(..., force=True))",
}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or an id this system cannot have: leave it alone
    return True


def _input_shape_problem(shape: list[Any]) -> str | None:
    """Why a list cannot be an input shape, or None."""
    if not 1 <= len(shape) <= MAX_INPUT_RANK:
        return f"it must have 1 to {MAX_INPUT_RANK} dimensions"
    if not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_INPUT_DIM for d in shape):
        return f"every dimension must be an integer from 1 to {MAX_INPUT_DIM}"
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        return f"it has {math.prod(shape)} elements, more than {MAX_INPUT_ELEMENTS}"
    return None


def _check_relative_path(relative: str, what: str) -> None:
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or "\\" in relative or any(part in ("..", "") for part in relative.split("/")):
        raise PortfolioError(
            f"{what}: path {relative!r} must be relative and stay inside the portfolio directory; "
            "the manifest is corrupt or was tampered with"
        )
