"""Trial-load ExecuTorch programs in a child process, so that a program that crashes the runtime is an
error instead of the end of this process.

ExecuTorch's Python runtime is not hardened against hostile input: some damaged ``.pte`` files abort
the process (a log line of invalid UTF-8 raises inside pybind11, which terminates; a program whose
output refers to a missing value fails an ``ET_CHECK``) even though the file passes flatbuffer
verification. So before a program is loaded here, a forked child loads it the same way
(``Runtime.load_program`` with full verification, ``load_method("forward")``) and runs it once on
zeros of its declared input; only if the child survives is the program loaded in this process. The
native runner does the same with ``--isolate on``.

A program that passed is remembered for the life of the process by its file's identity (device,
inode, size, modification and change times), so loading it again costs nothing extra. The cost of
a trial is one ``fork`` (tens of milliseconds in a process that has imported torch) plus a second
load and one inference of each program; one child checks a whole batch (``bench/trial.py``
measures it). Needs ``os.fork`` (Linux, macOS).

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> from lightning_shifter.trial import trial_load
    >>> garbage = Path(tempfile.mkdtemp()) / "model.pte"
    >>> _ = garbage.write_bytes(bytes(range(256)) * 8)
    >>> problem = trial_load([garbage])[garbage]
    >>> problem.startswith("the ExecuTorch runtime cannot load it") or problem.startswith("loading it crashed")
    True
"""

from __future__ import annotations

import json
import math
import os
import selectors
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

TIMEOUT_S = 300.0  # for one program: loading plus one inference
_MAX_INPUT_ELEMENTS = 1 << 26
# ExecuTorch ScalarType codes -> torch dtype names, for the zeros a program is run on
_DTYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64",
           11: "bool", 15: "bfloat16"}
_passed: set[tuple[str, int, int, int, int, int]] = set()
_lock = threading.Lock()


def _identity(path: Path) -> tuple[str, int, int, int, int, int]:
    info = path.stat()
    return (str(path.resolve()), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def trial_load(paths: Sequence[str | os.PathLike], timeout_s: float = TIMEOUT_S) -> dict[Path, str | None]:
    """For each ``.pte`` path: ``None`` if a child process loaded and ran it, else why not.

    Paths that passed before (and are unchanged since) are not tried again.
    """
    with _lock:  # one child at a time: a second one would hold the first one's pipes open
        return _trial_load(paths, timeout_s)


def _trial_load(paths: Sequence[str | os.PathLike], timeout_s: float) -> dict[Path, str | None]:
    import executorch.runtime  # noqa: F401  imported here once, not in every child

    problems: dict[Path, str | None] = {}  # for paths that cannot be read
    keys: dict[Path, tuple[str, int, int, int, int, int]] = {}
    for path in map(Path, paths):
        try:
            keys[path] = _identity(path)
        except OSError as err:
            problems[path] = f"cannot read it ({err.strerror})"
    failed: dict[tuple[str, int, int, int, int, int], str] = {}
    pending = list({key: path for path, key in keys.items() if key not in _passed}.items())
    while pending:
        outcomes = _run_child([path for _, path in pending], timeout_s)
        for (key, _), problem in zip(pending, outcomes):
            if problem is None:
                _passed.add(key)
            else:
                failed[key] = problem
        pending = pending[len(outcomes):]  # a crash ends the child: the rest go to a new one
    return {path: problems[path] if path in problems else failed.get(keys[path]) for path in map(Path, paths)}


def _run_child(paths: list[Path], timeout_s: float) -> list[str | None]:
    """Try ``paths`` in order in one forked child; returns the outcomes up to and including the
    first program that killed it (at least one)."""
    report_read, report_write = os.pipe()
    log_read, log_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(report_read)
        os.close(log_read)
        os.dup2(log_write, 2)  # the runtime logs to stderr; the parent keeps the tail for its message
        _child(paths, report_write)
    os.close(report_write)
    os.close(log_write)
    outcomes: list[str | None] = []
    pending = b""  # a report line not yet complete
    log_tail = b""
    timed_out = False
    with selectors.DefaultSelector() as selector:
        selector.register(report_read, selectors.EVENT_READ)
        selector.register(log_read, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while selector.get_map() and not timed_out:
            ready = selector.select(max(0.0, deadline - time.monotonic()))
            if not ready:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
            for key, _ in ready:
                chunk = os.read(key.fd, 65536)
                if key.fd == log_read:
                    log_tail = (log_tail + chunk)[-4096:]
                else:
                    *lines, pending = (pending + chunk).split(b"\n")
                    outcomes += [json.loads(line)["error"] for line in lines if line]
                    if lines:
                        deadline = time.monotonic() + timeout_s  # the clock runs per program
                if not chunk:
                    selector.unregister(key.fd)
    os.close(report_read)
    os.close(log_read)
    _, status = os.waitpid(pid, 0)
    if len(outcomes) < len(paths):  # the child died (or hung) on the next program
        tail = log_tail.decode("utf-8", "replace").strip().splitlines()[-2:]
        detail = f": {' / '.join(tail)}" if tail else ""
        if timed_out:
            outcomes.append(f"loading and running it once did not finish within {timeout_s:.0f} s")
        elif os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            outcomes.append(f"loading it crashed a trial process (signal {number}, "
                            f"{signal.Signals(number).name}{detail}); the program is corrupt")
        else:
            outcomes.append(f"a trial process loading it exited with status {os.waitstatus_to_exitcode(status)}"
                            f"{detail}")
    return outcomes


def _child(paths: list[Path], report: int) -> None:
    code = 0
    try:
        import torch
        from executorch.runtime import Runtime, Verification

        for path in paths:
            error = None
            try:
                method = Runtime.get().load_program(path, verification=Verification.InternalConsistency) \
                    .load_method("forward")
                error = _run_once(method, torch)
            except Exception as err:  # the runtime raises RuntimeError; anything else is as telling
                text = str(err).strip().splitlines()
                error = (f"the ExecuTorch runtime cannot load it ({text[0][:300] if text else type(err).__name__}); "
                         "the program is corrupt or needs an operator this runtime lacks")
            os.write(report, (json.dumps({"error": error}) + "\n").encode())
    except BaseException:
        code = 70
    finally:
        os._exit(code)


def _run_once(method: object, torch: object) -> str | None:
    meta = method.metadata
    inputs = []
    for index in range(meta.num_inputs()):
        info = meta.input_tensor_meta(index)
        sizes, dtype = tuple(info.sizes()), _DTYPES.get(info.dtype())
        if dtype is None:
            return None  # an input this check cannot make: loading it was the test
        if math.prod(sizes) > _MAX_INPUT_ELEMENTS:
            return f"it declares an input of {math.prod(sizes)} elements, more than {_MAX_INPUT_ELEMENTS}"
        inputs.append(torch.zeros(sizes, dtype=getattr(torch, dtype)))
    method.execute(inputs)
    return None
