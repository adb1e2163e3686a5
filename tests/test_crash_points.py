"""Kill `export` and `compact` at every point where they write to the portfolio: each time, the
portfolio still opens (every listed file present, with its size and sha256) or running the command
again repairs it, and running it again always ends where an uninterrupted run ends.

A write point is any call that changes the portfolio's folder: opening a file for writing, syncing
one (a kill there leaves a temporary file half written), renaming, deleting, making a folder. The
command runs in a forked child that counts those calls under the portfolio and SIGKILLs itself just
before the N-th; N goes from 1 until the command finishes without reaching it.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import lightning_shifter.export as export_module
from lightning_shifter.cli import main
from lightning_shifter.export import export_portfolio, lower
from lightning_shifter.portfolio import Portfolio, PortfolioError
from lightning_shifter.pt2 import load_program
from lightning_shifter.variants import add_variant
from test_export import SHAPE, tiny_net

pytestmark = pytest.mark.slow  # one forked export or compaction per write point


LOWERED: dict[str, tuple[bytes, list[str]]] = {}  # precision -> what lowering the one changed variant gives


def run_killed_at(point: int | None, root: Path, command: list[str]) -> int | None:
    """Run the CLI ``command`` in a forked child that SIGKILLs itself before its ``point``-th write
    under ``root``; returns the exit code, or None when it was killed."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            if LOWERED:  # the same bytes lowering makes, without its seconds per run: writes are what is tested
                export_module.lower = lambda program, precision="fp32", calibration_inputs=(): LOWERED[precision]
            if point is not None:
                _die_at(point, root.resolve())
            code = main(command)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return None
    return os.waitstatus_to_exitcode(status)


def _die_at(point: int, root: Path) -> None:
    seen = [0]

    def inside(path: object) -> bool:
        try:
            return Path(os.path.abspath(os.fsdecode(path))).is_relative_to(root)
        except TypeError:  # a descriptor
            return False

    def counted(original: Callable, *paths_of: Callable) -> Callable:
        def call(*args, **kwargs):
            if any(inside(path_of(args)) for path_of in paths_of):
                seen[0] += 1
                if seen[0] == point:
                    os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        return call

    first, second = (lambda a: a[0]), (lambda a: a[1])
    real_open, real_fsync = os.open, os.fsync

    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            return counted(real_open, first)(path, flags, *args, **kwargs)
        return real_open(path, flags, *args, **kwargs)

    def fsync(fd):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        return counted(real_fsync, lambda a: path)(fd)

    os.open, os.fsync = open_, fsync
    for name in ("replace", "rename"):
        setattr(os, name, counted(getattr(os, name), first, second))
    for name in ("unlink", "remove", "rmdir", "mkdir"):
        setattr(os, name, counted(getattr(os, name), first))


def every_kill_point(template: Path, work: Path, command: Callable[[Path], list[str]],
                     check: Callable[[Path], None]) -> int:
    """Kill ``command`` at each write point of a copy of ``template``; returns how many there were."""
    point = 1
    while True:
        shutil.rmtree(work, ignore_errors=True)
        if template.exists():
            shutil.copytree(template, work, symlinks=True)
        code = run_killed_at(point, work, command(work))
        if code is not None:  # finished before reaching this point: every point was tried
            assert code == 0
            check(work)
            return point - 1
        try:
            Portfolio.open(work, verify=True)
        except PortfolioError as err:  # allowed only if running the command again repairs it
            assert run_killed_at(None, work, command(work)) == 0, f"kill point {point}: {err}; not repaired"
        assert run_killed_at(None, work, command(work)) == 0, f"kill point {point}: the command fails afterwards"
        check(work)
        point += 1


@pytest.fixture(scope="module")
def stale_export(tmp_path_factory) -> Iterator[Path]:
    """Variants a and b exported fp32 + int8; then a's model.pt2 replaced, so that its fp32 program
    must be exported again and its int8 program (not asked for) is stale: export unlists and deletes it."""
    root = tmp_path_factory.mktemp("template") / "p"
    portfolio = Portfolio.create(root, input_shape=SHAPE)
    for name, width in (("a", 3), ("b", 4)):
        add_variant(portfolio, tiny_net(width), torch.zeros(SHAPE), name=name, round=0)
    export_portfolio(root, ("fp32", "int8"), calibration_data=[torch.randn(4, *SHAPE[1:])], runs=2)
    with torch.no_grad():
        changed = tiny_net(3)
        changed[0].weight.mul_(2)
    add_variant(Portfolio.open(root), changed, torch.zeros(SHAPE), name="a", round=1)
    LOWERED["fp32"] = lower(load_program(root / "a" / "model.pt2"), "fp32")
    yield root
    LOWERED.clear()


def test_export_killed_at_any_write_leaves_a_portfolio_that_opens(stale_export, tmp_path):
    def check(root: Path) -> None:
        portfolio = Portfolio.open(root, verify=True)
        assert set(portfolio["a"].files) == {"pt2", "fp32"}  # int8 stale: unlisted
        assert set(portfolio["b"].files) == {"pt2", "fp32", "int8"}
        assert not (root / "a" / "model_int8.pte").exists()  # and deleted, once unlisted
        assert not list(root.rglob("*.tmp"))  # temporaries of killed runs removed

    points = every_kill_point(stale_export, tmp_path / "p", lambda root: [
        "export", str(root), "--precisions", "fp32", "--no-progress"], check)
    assert points >= 10  # unlist, delete the stale program, write the new one, list it, record timings


def test_compact_killed_at_any_write_leaves_a_portfolio_that_opens_or_compact_repairs(stale_export, tmp_path):
    model = tiny_net(5).eval()
    with torch.no_grad():
        model[0].weight[:2] = 0
        model[0].bias[:2] = 0
    source = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(SHAPE),)), source)

    def check(root: Path) -> None:
        portfolio = Portfolio.open(root, verify=True)
        assert portfolio["a"].round == 0 and set(portfolio["a"].files) == {"pt2"}  # the new entry, no stale program
        assert not list(root.rglob("*.tmp"))

    command = ["compact", str(source), "--name", "a", "--portfolio"]
    replacing = every_kill_point(stale_export, tmp_path / "p", lambda root: [*command, str(root)], check)
    assert replacing >= 6  # unlist the old entry, write model.pt2, list the new entry
    creating = every_kill_point(tmp_path / "absent", tmp_path / "new", lambda root: [*command, str(root)], check)
    assert creating >= 6  # make the folder and the manifest, then as above
