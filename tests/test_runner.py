"""The native runner (mobile/): protocol round trips against a real exported portfolio, numbers
checked against the Python ExecuTorch runtime and eager PyTorch, bad input, fuzzing, and the
linux-aarch64 cross build run under qemu-user."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner_build import INPUT_SHAPE, Portfolio, build_runner, make_portfolio, pattern_input

QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]


@pytest.fixture(scope="session")
def runner_binary() -> Path:
    return build_runner("host")


@pytest.fixture(scope="session")
def portfolio(tmp_path_factory) -> Portfolio:
    return make_portfolio(tmp_path_factory.mktemp("portfolio"))


class RunnerProcess:
    """A running shifter_runner spoken to line by line."""

    def __init__(self, command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=cwd, env=env
        )
        self.ready = self.read()

    def read(self) -> dict:
        line = self.process.stdout.readline()
        assert line, f"runner exited (code {self.process.poll()}) instead of answering"
        return json.loads(line)

    def send(self, request: dict | str | bytes) -> dict:
        if isinstance(request, dict):
            request = json.dumps(request)
        if isinstance(request, str):
            request = request.encode()
        self.process.stdin.write(request + b"\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> int:
        if self.process.poll() is None:
            assert self.send({"cmd": "quit"}) == {"ok": True, "cmd": "quit"}
        return self.process.wait(timeout=30)


@pytest.fixture
def runner(runner_binary, portfolio):
    process = RunnerProcess([str(runner_binary), "--portfolio", str(portfolio.directory)])
    yield process
    assert process.close() == 0


def python_executorch(pte: Path, x: torch.Tensor) -> np.ndarray:
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(pte)).load_method("forward")
    return method.execute([x])[0].numpy()


def run_once(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def test_ready_line_reports_every_variant_loaded(runner, portfolio):
    ready = runner.ready
    names = [v["name"] for v in portfolio.manifest["variants"]]
    assert ready["event"] == "ready"
    assert ready["loaded"] == names and ready["failed"] == [] and ready["current"] == names[0]
    assert ready["input"] == {"shape": list(INPUT_SHAPE), "dtype": "float32"}
    assert ready["precision"] == "fp32" and ready["threads"] >= 1 and ready["isolation"] == "subprocess"
    assert ready["executorch"].startswith("1.5.1")
    for name in names:
        figures = ready["variants"][name]
        assert figures["bytes"] == portfolio.pte(name).stat().st_size
        assert figures["load_ms"] > 0 and figures["first_infer_ms"] > 0 and figures["verify_ms"] >= 0
    assert ready["peak_rss_kb"] >= ready["rss_kb"] > 0


def test_infer_matches_python_executorch_and_eager(runner, portfolio, tmp_path):
    x = pattern_input()
    random_input = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    input_file = tmp_path / "input.bin"
    input_file.write_bytes(random_input.numpy().astype("<f4").tobytes())
    for name, model in portfolio.models.items():
        switched = runner.send({"cmd": "switch", "variant": name})
        assert switched["ok"] and switched["variant"] == name
        answer = runner.send({"cmd": "infer", "n": 3})
        assert answer["ok"] and answer["variant"] == name and answer["n"] == 3
        assert answer["output_shape"] == [1, 10] and len(answer["latency_ms"]) == 3
        native = np.asarray(answer["output"], dtype=np.float32)
        expected = python_executorch(portfolio.pte(name), x).reshape(-1)
        np.testing.assert_allclose(native, expected, rtol=0, atol=1e-6)
        with torch.no_grad():
            np.testing.assert_allclose(native, model(x).numpy().reshape(-1), rtol=0, atol=1e-5)
        assert answer["argmax"] == int(np.argmax(native))

        output_file = tmp_path / f"{name}.bin"
        from_file = runner.send({"cmd": "infer", "input": str(input_file), "output_path": str(output_file)})
        assert from_file["ok"], from_file
        written = np.fromfile(output_file, dtype="<f4")
        np.testing.assert_array_equal(written, np.asarray(from_file["output"], dtype=np.float32))
        with torch.no_grad():
            np.testing.assert_allclose(written, model(random_input).numpy().reshape(-1), rtol=0, atol=1e-5)


def test_int8_variants_match_python_executorch(runner_binary, portfolio):
    process = RunnerProcess([str(runner_binary), "--portfolio", str(portfolio.directory), "--precision", "int8"])
    try:
        *with_int8, without_int8 = portfolio.models
        assert process.ready["precision"] == "int8" and process.ready["loaded"] == with_int8
        [failure] = process.ready["failed"]
        assert failure["name"] == without_int8 and "has no 'int8' file" in failure["error"]
        x = pattern_input()
        for name in with_int8:
            model = portfolio.models[name]
            assert process.send({"cmd": "switch", "variant": name})["ok"]
            answer = process.send({"cmd": "infer"})
            native = np.asarray(answer["output"], dtype=np.float32)
            expected = python_executorch(portfolio.pte(name, "int8"), x).reshape(-1)
            np.testing.assert_allclose(native, expected, rtol=0, atol=1e-5)
            with torch.no_grad():  # quantization error only
                np.testing.assert_allclose(native, model(x).numpy().reshape(-1), rtol=0, atol=0.1)
    finally:
        assert process.close() == 0


def test_switch_only_changes_the_current_variant(runner, portfolio):
    names = list(portfolio.models)
    answer = runner.send({"cmd": "switch", "variant": names[2], "id": "s1"})
    assert answer == {**answer, "ok": True, "cmd": "switch", "id": "s1", "variant": names[2], "previous": names[0]}
    assert 0 <= answer["switch_us"] < 1e6
    stats = runner.send({"cmd": "stats"})
    assert stats["current"] == names[2] and stats["loaded"] == names
    assert runner.send({"cmd": "infer"})["variant"] == names[2]


def test_bench_reports_ordered_latency_percentiles(runner, portfolio):
    names = list(portfolio.models)
    answer = runner.send({"cmd": "bench", "warmup": 2, "runs": 40, "variant": names[1]})
    assert answer["ok"] and answer["variant"] == names[1] and answer["runs"] == 40 and answer["warmup"] == 2
    assert 0 < answer["min_ms"] <= answer["p50_ms"] <= answer["p90_ms"] <= answer["p99_ms"] <= answer["max_ms"]
    assert answer["min_ms"] <= answer["mean_ms"] <= answer["max_ms"]
    assert answer["load_ms"] == runner.ready["variants"][names[1]]["load_ms"]
    assert answer["first_infer_ms"] == runner.ready["variants"][names[1]]["first_infer_ms"]
    assert answer["peak_rss_kb"] >= answer["rss_kb"] > 0
    # Benchmarking another variant leaves the current one alone; 1 warm-up + 2 + 40 runs counted.
    stats = runner.send({"cmd": "stats"})
    assert stats["current"] == names[0]
    assert stats["inferences"] == len(names) + 42


def test_bench_reload_loads_from_storage_again(runner, portfolio):
    name = list(portfolio.models)[1]
    answer = runner.send({"cmd": "bench_reload", "variant": name, "runs": 3})
    assert answer["ok"] and answer["runs"] == 3
    assert len(answer["load_ms"]) == 3 and len(answer["first_infer_ms"]) == 3
    assert all(value > 0 for value in answer["load_ms"] + answer["first_infer_ms"])
    assert min(answer["load_ms"]) <= answer["load_p50_ms"] <= max(answer["load_ms"])
    assert answer["switch_us"] > 0
    assert runner.send({"cmd": "stats"})["current"] == list(portfolio.models)[0]


def test_fields_a_request_leaves_out_take_their_documented_defaults(runner, portfolio):
    name = list(portfolio.models)[1]
    reload = runner.send({"cmd": "bench_reload", "variant": name})
    assert reload["runs"] == 5 and len(reload["load_ms"]) == 5
    bench = runner.send({"cmd": "bench"})
    assert (bench["warmup"], bench["runs"], bench["variant"]) == (5, 50, list(portfolio.models)[0])
    infer = runner.send({"cmd": "infer"})
    assert infer["n"] == 1 and len(infer["latency_ms"]) == 1 and len(infer["output"]) == 10
    assert len(runner.send({"cmd": "infer", "max_output": 3})["output"]) == 3


BAD_REQUESTS = [
    ("{not json", None, "malformed JSON"),
    ("", None, "malformed JSON"),
    ("[1, 2]", None, "not an object"),
    ('{"id": 3}', None, "missing string field 'cmd'"),
    ('{"cmd": 5}', None, "missing string field 'cmd'"),
    ('{"cmd": "explode"}', "explode", "unknown command 'explode'"),
    ('{"cmd": "switch"}', "switch", "needs 'variant'"),
    ('{"cmd": "switch", "variant": "round-99"}', "switch", "unknown variant 'round-99'"),
    ('{"cmd": "infer", "n": 0}', "infer", "'n' must be an integer from 1"),
    ('{"cmd": "infer", "n": 2.5}', "infer", "'n' must be an integer"),
    ('{"cmd": "infer", "n": "3"}', "infer", "'n' must be an integer"),
    ('{"cmd": "infer", "n": 18446744073709551615}', "infer", "'n' must be an integer"),
    ('{"cmd": "infer", "nn": 3}', "infer", "unknown field 'nn'"),
    ('{"cmd": "infer", "input": "/nonexistent/x.bin"}', "infer", "cannot open input file"),
    ('{"cmd": "infer", "input": "/"}', "infer", "not a regular file"),
    ('{"cmd": "infer", "output_path": "/"}', "infer", "cannot write output file"),
    ('{"cmd": "bench", "runs": 0}', "bench", "'runs' must be an integer from 1"),
    ('{"cmd": "bench", "variant": ""}', "bench", "non-empty string"),
    ('{"cmd": "stats", "id": [1]}', None, "'id' must be"),
    ("[" * 100000, None, "malformed JSON"),
]


@pytest.mark.parametrize(("line", "cmd", "message"), BAD_REQUESTS, ids=[r[2] for r in BAD_REQUESTS])
def test_bad_requests_get_an_error_line_and_the_runner_keeps_serving(runner, line, cmd, message):
    answer = runner.send(line)
    assert answer["ok"] is False and answer["cmd"] == cmd
    assert message in answer["error"]
    assert runner.send({"cmd": "stats"})["ok"] is True


def test_wrong_input_size_names_the_expected_bytes(runner, tmp_path):
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(b"\0" * 12)
    answer = runner.send({"cmd": "infer", "input": str(wrong), "id": 9})
    assert answer["ok"] is False and answer["id"] == 9
    assert "has 12 bytes" in answer["error"] and "needs 256 bytes" in answer["error"]
    assert runner.send({"cmd": "infer"})["ok"]


def test_overlong_line_is_rejected_and_skipped(runner):
    answer = runner.send(b'{"cmd":"stats","pad":"' + b"x" * (2 << 20) + b'"}')
    assert answer["ok"] is False and "longer than" in answer["error"]
    assert runner.send({"cmd": "stats"})["ok"]


def test_a_line_of_exactly_the_limit_may_end_in_a_carriage_return(runner):
    def request(size: int) -> bytes:  # a valid request of exactly ``size`` bytes
        frame = b'{"cmd":"stats","id":""}'
        return frame[:-2] + b"x" * (size - len(frame)) + frame[-2:]

    limit = 1 << 20
    assert runner.send(request(limit) + b"\r")["ok"] is True  # the README: a trailing \r is ignored
    assert runner.send(request(limit))["ok"] is True
    assert "longer than" in runner.send(request(limit + 1))["error"]
    assert "longer than" in runner.send(request(limit + 1) + b"\r")["error"]


def test_nul_bytes_never_end_a_request(runner, tmp_path):
    answer = runner.send(b'{"cmd":"stats"}\0junk')
    assert answer["ok"] is False and "holds a NUL byte" in answer["error"]
    good = tmp_path / "input.bin"
    good.write_bytes(pattern_input().numpy().astype("<f4").tobytes())
    answer = runner.send(json.dumps({"cmd": "infer", "input": str(good) + "\u0000.ignored"}))
    assert answer["ok"] is False and "'input' must not contain a NUL character" in answer["error"]
    assert runner.send({"cmd": "infer", "input": str(good)})["ok"]


def send_within(process: RunnerProcess, request: dict, seconds: float = 30.0) -> dict:
    """Send a request and read its answer, failing (instead of hanging) if none comes in time."""
    import select

    process.process.stdin.write(json.dumps(request).encode() + b"\n")
    process.process.stdin.flush()
    ready, _, _ = select.select([process.process.stdout], [], [], seconds)
    assert ready, f"no answer within {seconds} s to {request}: the runner hangs"
    return process.read()


def test_output_path_is_checked_before_anything_is_written(runner_binary, portfolio, tmp_path):
    directory = Path(shutil.copytree(portfolio.directory, tmp_path / "p"))
    process = RunnerProcess([str(runner_binary), "--portfolio", str(directory)])
    protected = {path: path.read_bytes() for path in [directory / "manifest.json", *directory.rglob("*.pte")]}
    loaded = directory / portfolio.manifest["variants"][0]["files"]["fp32"]["path"]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "manifest-link").symlink_to(directory / "manifest.json")
    os.link(loaded, tmp_path / "program-hardlink")
    cases = {
        str(fifo): "FIFO with no reader",
        "/dev/full": "not a regular file",
        str(directory / "manifest.json"): "inside the portfolio directory",
        str(loaded): "inside the portfolio directory",
        str(directory / "new-file.bin"): "inside the portfolio directory",
        str(tmp_path / "manifest-link"): "file of the portfolio",
        str(tmp_path / "program-hardlink"): "file of the portfolio",
        str(tmp_path / "no-such-folder" / "out.bin"): "does not exist",
    }
    try:
        for path, message in cases.items():
            answer = send_within(process, {"cmd": "infer", "output_path": path})
            assert answer["ok"] is False and "cannot write output file" in answer["error"], (path, answer)
            assert message in answer["error"], (path, answer)
        assert {path: path.read_bytes() for path in protected} == protected
        assert not (directory / "new-file.bin").exists()
        fine = tmp_path / "out.bin"
        fine.write_bytes(b"longer than the output" * 100)  # replaced, not overwritten in place
        answer = send_within(process, {"cmd": "infer", "output_path": str(fine)})
        assert answer["ok"] and np.fromfile(fine, dtype="<f4").size == 10
    finally:
        assert process.close() == 0


def test_a_manifest_that_is_not_a_regular_file_is_fatal_not_a_crash_or_a_hang(runner_binary, tmp_path):
    (tmp_path / "dir" / "manifest.json").mkdir(parents=True)
    assert "is not a regular file" in fatal(runner_binary, "--portfolio", str(tmp_path / "dir"))
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "manifest.json")
    assert "is not a regular file" in fatal(runner_binary, "--portfolio", str(tmp_path / "fifo"))


def test_a_program_that_is_a_fifo_is_rejected_even_unverified(runner_binary, portfolio, tmp_path):
    directory = Path(shutil.copytree(portfolio.directory, tmp_path / "p"))
    victim = directory / portfolio.manifest["variants"][1]["files"]["fp32"]["path"]
    victim.unlink()
    os.mkfifo(victim)
    process = RunnerProcess([str(runner_binary), "--portfolio", str(directory), "--verify", "none"])
    try:
        [failure] = process.ready["failed"]
        assert failure["name"] == portfolio.manifest["variants"][1]["name"] and "not a regular file" in failure["error"]
    finally:
        assert process.close() == 0


FIELD_VALUES = st.one_of(
    st.sampled_from(["switch", "infer", "bench", "bench_reload", "stats", "round-00", "round-02", "quit"]),
    st.integers(-(2**64), 2**64),
    st.integers(0, 3),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELD_NAMES = ["cmd", "id", "variant", "n", "input", "output_path", "max_output", "warmup", "runs", "x"]
COMMANDS = ["switch", "infer", "bench", "bench_reload", "stats", "quit", "QUIT", ""]
FUZZ_LINES = st.one_of(
    # Real commands with random fields and values: reaches the per-command validation.
    st.builds(
        lambda cmd, fields: {"cmd": cmd, **fields},
        st.sampled_from(COMMANDS),
        st.dictionaries(st.sampled_from(FIELD_NAMES[1:]), FIELD_VALUES, max_size=4),
    ).map(json.dumps).map(str.encode),
    # Random objects, text and bytes: reaches the JSON and envelope checks.
    st.dictionaries(st.sampled_from(FIELD_NAMES), FIELD_VALUES, max_size=4).map(json.dumps).map(str.encode),
    st.text(max_size=64).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=64),
).map(lambda line: line.replace(b"\n", b" "))


@pytest.fixture(scope="module")
def fuzz_runner(runner_binary, portfolio, tmp_path_factory):
    # Fuzzed output_path values are written relative to the working directory: keep them in tmp.
    process = RunnerProcess(
        [str(runner_binary), "--portfolio", str(portfolio.directory)], cwd=tmp_path_factory.mktemp("fuzz")
    )
    yield process
    assert process.close() == 0


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=FUZZ_LINES)
def test_fuzzed_lines_get_exactly_one_json_answer(fuzz_runner, line):
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        request = None
    if isinstance(request, dict) and request.get("cmd") == "quit" and set(request) <= {"cmd", "id"}:
        return  # a valid quit ends the session: covered by every other test's teardown
    answer = fuzz_runner.send(line)
    assert isinstance(answer["ok"], bool)
    if not answer["ok"]:
        assert isinstance(answer["error"], str) and answer["error"]
    assert fuzz_runner.send({"cmd": "stats"})["ok"] is True


def corrupt_copy(portfolio: Portfolio, directory: Path) -> Path:
    """A copy of the portfolio with one good variant and one of each kind of broken one."""
    shutil.copytree(portfolio.directory, directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    good, flipped, truncated = manifest["variants"]
    # round-01: one byte changed, manifest untouched -> sha256 mismatch.
    path = directory / flipped["files"]["fp32"]["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    # round-02: truncated and the manifest updated to match -> passes the checks, fails to load.
    path = directory / truncated["files"]["fp32"]["path"]
    cut = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(cut)
    truncated["files"]["fp32"].update(bytes=len(cut), sha256=hashlib.sha256(cut).hexdigest())
    (directory.parent / "outside.pte").write_bytes(b"x")
    os.symlink(directory.parent / "outside.pte", directory / "link.pte")
    fp32 = good["files"]["fp32"]
    manifest["variants"] += [
        {"name": "escape", "files": {"fp32": {**fp32, "path": "../outside.pte"}}},
        {"name": "absolute", "files": {"fp32": {**fp32, "path": "/etc/passwd"}}},
        {"name": "symlink", "files": {"fp32": {**fp32, "path": "link.pte"}}},
        {"name": "missing", "files": {"fp32": {**fp32, "path": "missing/model.pte"}}},
        {"name": "short", "files": {"fp32": {**fp32, "bytes": fp32["bytes"] + 1}}},
        {"name": "no-fp32", "files": {}},
        {"name": "bad name!", "files": {"fp32": fp32}},
        {"name": good["name"], "files": {"fp32": fp32}},
    ]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_broken_variants_are_reported_and_the_others_served(runner_binary, portfolio, tmp_path):
    directory = corrupt_copy(portfolio, tmp_path / "broken")
    process = RunnerProcess([str(runner_binary), "--portfolio", str(directory)])
    try:
        good = list(portfolio.models)[0]
        assert process.ready["loaded"] == [good] and process.ready["current"] == good
        errors = {failure["name"]: failure["error"] for failure in process.ready["failed"]}
        assert "sha256" in errors["round-01"] and "corrupt" in errors["round-01"]
        assert "cannot load program" in errors["round-02"]
        assert "would leave the portfolio directory" in errors["escape"]
        assert "is absolute" in errors["absolute"]
        assert "resolves outside the portfolio directory" in errors["symlink"]
        assert "is missing" in errors["missing"]
        assert "bytes but the manifest says" in errors["short"]
        assert "has no 'fp32' file" in errors["no-fp32"]
        assert "name is missing or not of the form" in errors["#9"]
        assert "appears twice" in errors[good]
        answer = process.send({"cmd": "switch", "variant": "round-02"})
        assert answer["ok"] is False and "failed to load" in answer["error"]
        assert process.send({"cmd": "infer"})["ok"]
    finally:
        assert process.close() == 0


def program_that_aborts_the_runtime(pte: bytes) -> bytes:
    """The program with its output pointing at a value that does not exist: it passes flatbuffer
    verification, and ExecuTorch then aborts (ET_CHECK in Method::get_value) instead of failing."""
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

    program = deserialize_pte_binary(pte)
    program.program.execution_plan[0].outputs[0] = 1000
    return bytes(serialize_pte_binary(program, extract_delegate_segments=True))


def elf_interpreter(binary: Path) -> str:
    """The dynamic loader an ELF executable names (PT_INTERP)."""
    data = binary.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for index in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + index * phentsize)
        if p_type == 3:  # PT_INTERP
            return data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
    raise AssertionError(f"{binary} names no loader")


@pytest.mark.parametrize("started", ["directly", "through its loader"])
def test_program_that_crashes_the_runtime_is_isolated(runner_binary, portfolio, tmp_path, started):
    from lightning_shifter.device.builds import shared_libraries

    # Through its loader (as the arm64 bundle starts the runner) /proc/self/exe is the loader: the
    # trial child must be started through it too, with the loader's arguments.
    command = [str(runner_binary)] if started == "directly" else [
        elf_interpreter(runner_binary), "--library-path", str(shared_libraries(runner_binary)[0].parent),
        str(runner_binary)]
    directory = tmp_path / "p"
    shutil.copytree(portfolio.directory, directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    victim = manifest["variants"][1]
    pte = directory / victim["files"]["fp32"]["path"]
    damaged = program_that_aborts_the_runtime(pte.read_bytes())
    pte.write_bytes(damaged)
    # The manifest vouches for the damaged bytes, so size and sha256 checks pass.
    victim["files"]["fp32"].update(bytes=len(damaged), sha256=hashlib.sha256(damaged).hexdigest())
    (directory / "manifest.json").write_text(json.dumps(manifest))
    unprotected = run_once([*command, "--portfolio", str(directory), "--isolate", "off"], input="")
    assert unprotected.returncode < 0 and unprotected.stdout == ""  # what isolation prevents
    process = RunnerProcess([*command, "--portfolio", str(directory)])
    try:
        assert process.ready["isolation"] == "subprocess"
        assert [f["name"] for f in process.ready["failed"]] == [victim["name"]]
        assert "crashed a trial process (signal 6" in process.ready["failed"][0]["error"]
        assert len(process.ready["loaded"]) == len(portfolio.models) - 1
        assert all(process.ready["variants"][n]["check_ms"] > 0 for n in process.ready["loaded"])
        assert process.send({"cmd": "infer"})["ok"]
    finally:
        assert process.close() == 0


def test_no_loadable_variant_still_serves_stats_and_errors(runner_binary, portfolio, tmp_path):
    directory = corrupt_copy(portfolio, tmp_path / "broken")
    process = RunnerProcess([str(runner_binary), "--portfolio", str(directory), "--variants", "round-01,round-02"])
    try:
        assert process.ready["loaded"] == [] and process.ready["current"] is None
        assert "no variant is loaded" in process.send({"cmd": "infer"})["error"]
        assert process.send({"cmd": "stats"})["failed"] == ["round-01", "round-02"]
    finally:
        assert process.close() == 0


def fatal(runner_binary, *arguments: str) -> str:
    result = run_once([str(runner_binary), *arguments])
    assert result.returncode == 2, result
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["event"] == "fatal"
    return line["error"]


def test_unusable_portfolio_or_arguments_end_with_a_fatal_line(runner_binary, portfolio, tmp_path):
    assert "does not exist" in fatal(runner_binary, "--portfolio", str(tmp_path / "nowhere"))
    assert "no manifest.json" in fatal(runner_binary, "--portfolio", str(tmp_path))
    (tmp_path / "manifest.json").write_text('{"schema_version": 3}')
    assert "reads only schema_version 1 or 2" in fatal(runner_binary, "--portfolio", str(tmp_path))
    (tmp_path / "manifest.json").write_text("{oops")
    assert "is not valid JSON" in fatal(runner_binary, "--portfolio", str(tmp_path))
    (tmp_path / "manifest.json").write_text("[1]")
    assert "is JSON but not an object (it is array)" in fatal(runner_binary, "--portfolio", str(tmp_path))
    manifest = dict(portfolio.manifest, input={"shape": [1, 8], "dtype": "int64"})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert "float32 inputs only" in fatal(runner_binary, "--portfolio", str(tmp_path))
    directory = str(portfolio.directory)
    assert "does not list" in fatal(runner_binary, "--portfolio", directory, "--variants", "round-07")
    assert "--precision must be" in fatal(runner_binary, "--portfolio", directory, "--precision", "fp16")
    assert "--threads takes an integer" in fatal(runner_binary, "--portfolio", directory, "--threads", "0")
    assert "--isolate must be" in fatal(runner_binary, "--portfolio", directory, "--isolate", "maybe")
    assert "unknown argument" in fatal(runner_binary, "--portfolio", directory, "--turbo")
    assert "--portfolio DIR is required" in fatal(runner_binary)


def test_input_shape_mismatch_fails_the_variant(runner_binary, portfolio, tmp_path):
    shutil.copytree(portfolio.directory, tmp_path / "p")
    manifest = dict(portfolio.manifest, input={"shape": [1, 1, 16, 16], "dtype": "float32"})
    (tmp_path / "p" / "manifest.json").write_text(json.dumps(manifest))
    process = RunnerProcess([str(runner_binary), "--portfolio", str(tmp_path / "p")])
    try:
        assert process.ready["loaded"] == []
        assert all("forward expects a tensor of shape [1,1,8,8]" in f["error"] for f in process.ready["failed"])
    finally:
        assert process.close() == 0


def test_variant_filter_thread_count_and_verify_level(runner_binary, portfolio):
    names = list(portfolio.models)
    command = [str(runner_binary), "--portfolio", str(portfolio.directory), "--threads", "1", "--verify", "size"]
    process = RunnerProcess([*command, "--variants", ",".join(names[1:])])
    try:
        assert process.ready["loaded"] == names[1:] and process.ready["threads"] == 1
        assert process.send({"cmd": "stats"})["threads"] == 1
    finally:
        assert process.close() == 0


def test_one_shot_bench_mode(runner_binary, portfolio):
    result = run_once(
        [str(runner_binary), "--portfolio", str(portfolio.directory), "--bench", "--warmup", "1", "--runs", "5"]
    )
    assert result.returncode == 0, result.stdout
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["event"] == "ready"
    assert [line["variant"] for line in lines[1:-1]] == list(portfolio.models)
    assert all(line["cmd"] == "bench" and line["runs"] == 5 and line["p50_ms"] > 0 for line in lines[1:-1])
    assert lines[-1]["cmd"] == "stats" and lines[-1]["inferences"] == 3 * (1 + 1 + 5)


def test_end_of_input_exits_cleanly(runner_binary, portfolio):
    result = run_once([str(runner_binary), "--portfolio", str(portfolio.directory)], input="")
    assert result.returncode == 0 and json.loads(result.stdout)["event"] == "ready"


def test_version_names_the_executorch_it_was_built_against(runner_binary):
    version = json.loads(run_once([str(runner_binary), "--version"]).stdout)
    assert version["runner"] == "shifter_runner 0.1.0" and version["executorch"].startswith("1.5.1")


def test_sha256_matches_hashlib(runner_binary, tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for size in (0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, (1 << 20) + 3):
        path = tmp_path / f"f{size}"
        path.write_bytes(rng.bytes(size))
        files.append(path)
    result = run_once([str(runner_binary), "--sha256", *map(str, files)])
    assert result.returncode == 0
    digests = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["sha256"] for d in digests] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    assert "cannot open" in fatal(runner_binary, "--sha256", str(tmp_path / "absent"))


@pytest.mark.slow
def test_aarch64_cross_build_runs_under_qemu(portfolio):
    assert shutil.which(QEMU[0]), "qemu-aarch64 is missing: apt-get install -y qemu-user g++-aarch64-linux-gnu"
    binary = build_runner("aarch64")
    header = binary.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    process = RunnerProcess([*QEMU, str(binary), "--portfolio", str(portfolio.directory)])
    try:
        assert process.ready["loaded"] == list(portfolio.models) and process.ready["failed"] == []
        # qemu-user cannot start the aarch64 child for the trial load unless binfmt_misc is set up.
        assert process.ready["isolation"] in ("subprocess", "unavailable: the child could not execute this program")
        x = pattern_input()
        for name in portfolio.models:
            assert process.send({"cmd": "switch", "variant": name})["ok"]
            native = np.asarray(process.send({"cmd": "infer"})["output"], dtype=np.float32)
            expected = python_executorch(portfolio.pte(name), x).reshape(-1)
            np.testing.assert_allclose(native, expected, rtol=0, atol=1e-5)
        bench = process.send({"cmd": "bench", "warmup": 1, "runs": 5})
        assert 0 < bench["p50_ms"] <= bench["p99_ms"]
    finally:
        assert process.close() == 0


@pytest.mark.slow
def test_arm64_bundle_serves_a_portfolio_with_nothing_but_its_own_files(portfolio, tmp_path):
    """The arm64 bundle for phones without an NDK build, under qemu-user with an empty library prefix:
    only the bundle's loader and libraries can be found."""
    assert shutil.which("qemu-aarch64"), "qemu-aarch64 is missing: apt-get install -y qemu-user g++-aarch64-linux-gnu"
    bundle = build_runner("arm64-bundle").parent.parent
    launcher = (bundle / "bin/shifter_runner").read_text()
    assert launcher.startswith("#!/system/bin/sh\n") and "--library-path" in launcher
    libraries = {path.name for path in (bundle / "lib").iterdir()}
    assert {"ld-linux-aarch64.so.1", "libc.so.6", "libstdc++.so.6", "libexecutorch.so",
            "shifter_runner-aarch64"} <= libraries
    empty = tmp_path / "empty-prefix"
    empty.mkdir()
    env = {"PATH": os.environ["PATH"], "QEMU_LD_PREFIX": str(empty)}
    program = bundle / "lib/shifter_runner-aarch64"
    # the program alone finds no C library: nothing outside the bundle is visible
    alone = subprocess.run(["qemu-aarch64", str(program), "--version"], env=env, capture_output=True, timeout=60)
    assert alone.returncode != 0
    command = ["qemu-aarch64", str(bundle / "lib/ld-linux-aarch64.so.1"), "--library-path", str(bundle / "lib"),
               str(program)]
    version = subprocess.run([*command, "--version"], env=env, capture_output=True, timeout=60)
    assert json.loads(version.stdout)["executorch"].startswith("1.5.1")
    runner = RunnerProcess([*command, "--portfolio", str(portfolio.directory)], env=env)
    try:
        assert runner.ready["loaded"] == list(portfolio.models) and runner.ready["failed"] == []
        # qemu-user alone cannot exec the aarch64 loader for the trial child (binfmt_misc can: the
        # arm64 stand-in phone in test_device.py checks "subprocess" there)
        assert runner.ready["isolation"] in ("subprocess", "unavailable: the child could not execute this program")
        x = pattern_input()
        for name in portfolio.models:
            assert runner.send({"cmd": "switch", "variant": name})["ok"]
            native = np.asarray(runner.send({"cmd": "infer"})["output"], dtype=np.float32)
            np.testing.assert_allclose(native, python_executorch(portfolio.pte(name), x).reshape(-1), rtol=0, atol=1e-5)
        assert runner.send({"cmd": "stats"})["peak_rss_kb"] > 0
    finally:
        assert runner.close() == 0
