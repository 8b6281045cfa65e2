"""The eager-PyTorch backend: real `.pt2` programs run like the eager module; hostile archives never run code.

Every hostile archive below is a real `torch.export.save` file with one part swapped for a payload that
writes a marker file when executed. For the payloads that plain `torch.export.load` (+ `module()` and one
call) really executes, a control run in a subprocess shows the marker appearing, so the refusal is known
to block a live attack rather than a harmless oddity.
"""

from __future__ import annotations

import importlib.metadata
import json
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agent.runtimes.base import ModelLoadError, RuntimeUnsupported  # noqa: E402
from agent.runtimes.pt2_guard import check_pt2_archive, check_sym_expr, write_checked_pt2  # noqa: E402
from agent.runtimes.torch_export import BACKEND  # noqa: E402
from agent.runtimes.zip_check import read_members  # noqa: E402
from agent.types import PrecisionHint, RuntimeConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 3)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.head(y) * self.scale


class TwoOut(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, (a * b).sum(1)


@pytest.fixture(scope="module")
def eager() -> torch.nn.Module:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # non-trivial BN statistics, so eval-mode BN matters
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    return net


@pytest.fixture(scope="module")
def program(eager: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dynamic-batch program (so its JSON carries symbolic sizes)."""
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(eager, (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    path = tmp_path_factory.mktemp("pt2") / "model.pt2"
    torch.export.save(ep, path)
    return path


def _config(**kwargs: object) -> RuntimeConfig:
    return RuntimeConfig(name="torch", intra_op_threads=1, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _load(path: Path, config: RuntimeConfig | None = None):  # type: ignore[no-untyped-def]
    config = config or _config()
    BACKEND.prepare(path, config)
    return BACKEND.load(path, config)


# ---------------------------------------------------------------------------------------------- real programs


@pytest.mark.usefixtures("restore_threads")
def test_outputs_equal_the_eager_module(program: Path, eager: torch.nn.Module) -> None:
    session = _load(program)
    assert [(i.name, i.shape, i.dtype) for i in session.inputs] == [("x", (-1, 1, 8, 8), "float32")]
    assert session.outputs[0].shape == (-1, 3) and session.outputs[0].dtype == "float32"
    for batch in (1, 5):  # the symbolic batch axis takes any size in the exported range
        x = np.random.default_rng(batch).standard_normal((batch, 1, 8, 8)).astype(np.float32)
        (out,) = session.run({"x": x})
        with torch.no_grad():
            expected = eager(torch.from_numpy(x)).numpy()
        assert isinstance(out, np.ndarray) and out.shape == (batch, 3)
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert session.execution_providers() == ("cpu",)
    details = session.details()
    assert details["intra_op_threads"] == "1" and details["torch_version"] == torch.__version__
    session.close()


@pytest.mark.usefixtures("restore_threads")
def test_several_inputs_and_outputs_in_signature_order(tmp_path: Path) -> None:
    module = TwoOut()
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(module, (a, b)), path)
    session = _load(path)
    assert [i.name for i in session.inputs] == ["a", "b"]
    got = session.run({"a": a.numpy(), "b": b.numpy()})
    expected = module(a, b)
    assert len(got) == 2
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e.numpy(), rtol=1e-6)


def test_probe_reports_torch_and_the_registry_points_here() -> None:
    from agent.runtimes import REGISTRY, load_backend

    info = BACKEND.probe()
    assert info.available and info.version == importlib.metadata.version("torch")
    assert REGISTRY["torch"] == "agent.runtimes.torch_export:BACKEND"
    assert load_backend("torch") is BACKEND


def test_probe_without_torch_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.runtimes.torch_export as module

    monkeypatch.setattr(module, "_torch_version", lambda: None)
    info = BACKEND.probe()
    assert not info.available and "optional: install edgebench[torch]" in info.unavailable_reason
    with pytest.raises(RuntimeUnsupported, match=r"edgebench\[torch\]"):
        BACKEND.prepare(Path("unused.pt2"), _config())


def test_unsupported_requests_are_refused(program: Path) -> None:
    with pytest.raises(RuntimeUnsupported, match="CPU only"):
        BACKEND.prepare(program, _config(device="cuda"))
    with pytest.raises(RuntimeUnsupported, match="fp16"):
        BACKEND.prepare(program, _config(precision_hint=PrecisionHint.FP16))


# ---------------------------------------------------------------------------------------------- bad files


def test_bad_files_are_model_load_errors(program: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a zip at all \x00\xff" * 50)
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(program.read_bytes()[: program.stat().st_size // 2])
    for path in (garbage, truncated):
        with pytest.raises(ModelLoadError, match=r"not a torch\.export program"):
            BACKEND.prepare(path, _config())


def test_pickled_module_renamed_pt2_is_refused_without_unpickling(eager: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    torch.save(eager, path)  # a whole pickled nn.Module: loading it would unpickle arbitrary classes
    with pytest.raises(ModelLoadError, match="pt2 format"):
        BACKEND.prepare(path, _config())


# ---------------------------------------------------------------------------------------------- hostile archives


class _Payload:
    """Unpickling this writes the marker file (stands in for any code an attacker would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _rewrite(src: Path, dst: Path, change: Callable[[dict[str, bytes]], None]) -> Path:
    """Copy a .pt2 member by member (stored, like torch writes them), letting `change` edit the members."""
    with zipfile.ZipFile(src) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    change(members)
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def _member(members: dict[str, bytes], suffix: str) -> str:
    return next(n for n in members if n.endswith(suffix))


def _edit_json(members: dict[str, bytes], suffix: str, edit: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    name = _member(members, suffix)
    document = json.loads(members[name])
    edit(document)
    members[name] = json.dumps(document).encode()


CONTROL = """
import sys, torch
try:
    module = torch.export.load(sys.argv[1]).module()
    module(torch.zeros(2, 1, 8, 8))
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def _unguarded_load_runs_it(path: Path, marker: Path) -> bool:
    """Control: plain torch.export.load + module() + one call, in a subprocess. Did the payload run?"""
    subprocess.run([sys.executable, "-c", CONTROL, str(path)], cwd=ROOT, capture_output=True, timeout=300, check=False)
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


def _sample_inputs_payload(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def change(members: dict[str, bytes]) -> None:
        members[_member(members, "data/sample_inputs/model.pt")] = pickle.dumps(_Payload(marker))

    return change


def _pickled_weight_payload(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def change(members: dict[str, bytes]) -> None:
        def edit(config: dict) -> None:  # type: ignore[type-arg]
            config["config"]["conv.weight"]["use_pickle"] = True

        _edit_json(members, "model_weights_config.json", edit)
        path_name = json.loads(members[_member(members, "model_weights_config.json")])["config"]["conv.weight"]
        members[_member(members, "data/weights/" + path_name["path_name"])] = pickle.dumps(_Payload(marker))

    return change


def _sympy_payload(marker: Path) -> Callable[[dict[str, bytes]], None]:
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"

    def change(members: dict[str, bytes]) -> None:
        def edit(program: dict) -> None:  # type: ignore[type-arg]
            sizes = program["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]
            sizes[0]["as_expr"]["expr_str"] = f"{code} + Symbol('s77', positive=True, integer=True)"

        _edit_json(members, "models/model.json", edit)

    return change


def _guards_payload(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def change(members: dict[str, bytes]) -> None:
        def edit(program: dict) -> None:  # type: ignore[type-arg]
            program["guards_code"] = [f"__import__('pathlib').Path({str(marker)!r}).write_text('ran') > 0"]

        _edit_json(members, "models/model.json", edit)

    return change


LIVE_PAYLOADS = {
    "sample inputs pickle (torch retries with weights_only=False)": _sample_inputs_payload,
    "weight marked use_pickle": _pickled_weight_payload,
    "symbolic size evaluated by sympy": _sympy_payload,
    "guards_code compiled by module()": _guards_payload,
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(LIVE_PAYLOADS))
def test_hostile_pt2_is_refused_and_its_code_does_not_run(kind: str, program: Path, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    hostile = _rewrite(program, tmp_path / "model.pt2", LIVE_PAYLOADS[kind](marker))
    assert _unguarded_load_runs_it(hostile, marker), f"control: plain torch.export.load should run the {kind}"
    with pytest.raises(ModelLoadError) as err:
        _load(hostile)
    assert not marker.exists(), "the payload ran"
    assert "refused before torch opened the file" in str(err.value) or "could not load" in str(err.value)


def test_the_sample_inputs_payload_passes_the_archive_check_but_torch_loads_it_weights_only(
    program: Path, tmp_path: Path
) -> None:
    """The second layer on its own: sample inputs are always a torch.save file, so the archive check lets
    them through; loading with weights-only forced refuses the pickle instead of running it."""
    marker = tmp_path / "payload-ran"
    hostile = _rewrite(program, tmp_path / "model.pt2", _sample_inputs_payload(marker))
    check_pt2_archive(hostile)
    with pytest.raises(ModelLoadError, match="could not load"):
        BACKEND.load(hostile, _config())
    assert not marker.exists()


def _replace_member(suffix: str, new_name: str, data: bytes | None = None) -> Callable[[dict[str, bytes]], None]:
    def change(members: dict[str, bytes]) -> None:
        root = next(iter(members)).split("/", 1)[0]
        if suffix:
            members.pop(_member(members, suffix))
        members[f"{root}/{new_name}"] = data if data is not None else b"\x7fELF fake shared library"

    return change


def _edit_program(edit: Callable[[dict], None]) -> Callable[[dict[str, bytes]], None]:  # type: ignore[type-arg]
    def change(members: dict[str, bytes]) -> None:
        _edit_json(members, "models/model.json", edit)

    return change


def _first_node(program: dict) -> dict:  # type: ignore[type-arg]
    return program["graph_module"]["graph"]["nodes"][0]  # type: ignore[no-any-return]


def _set_target(target: str) -> Callable[[dict[str, bytes]], None]:
    def edit(program: dict) -> None:  # type: ignore[type-arg]
        _first_node(program)["target"] = target

    return _edit_program(edit)


def _rename_weight(fqn: str) -> Callable[[dict[str, bytes]], None]:
    def change(members: dict[str, bytes]) -> None:
        def edit(config: dict) -> None:  # type: ignore[type-arg]
            config["config"][fqn] = config["config"].pop("conv.weight")

        _edit_json(members, "model_weights_config.json", edit)

    return change


def _custom_constant(members: dict[str, bytes]) -> None:
    def edit(config: dict) -> None:  # type: ignore[type-arg]
        config["config"]["obj"] = {"path_name": "custom_obj_0", "is_param": False, "use_pickle": False}

    _edit_json(members, "model_constants_config.json", edit)


STATIC_REFUSALS = {
    "AOTInductor shared library": (_replace_member("", "data/aotinductor/model/model.so"), "data/aotinductor"),
    "legacy pickled weights": (_replace_member("", "data/weights/model.pt", b"pickle"), "data/weights/model.pt"),
    "os.system as a graph target": (_set_target("torch.os.system"), "torch.os.system"),
    "builtin eval as a graph target": (_set_target("builtins.eval"), "builtins.eval"),
    "code in a parameter name": (_rename_weight('w")or(__import__("os"))or("'), "plain dotted name"),
    "custom object constant": (_custom_constant, "custom_obj_0"),
    "quote in a node name": (
        _edit_program(lambda p: _first_node(p)["outputs"][0]["as_tensor"].update(name='x"); import os; ("')),
        "not a plain name",
    ),
}


@pytest.mark.parametrize("kind", list(STATIC_REFUSALS))
def test_archive_check_refuses_what_could_run_code(kind: str, program: Path, tmp_path: Path) -> None:
    change, expected = STATIC_REFUSALS[kind]
    hostile = _rewrite(program, tmp_path / "model.pt2", change)
    with pytest.raises(ModelLoadError, match="refused before torch opened the file") as err:
        check_pt2_archive(hostile)
    assert expected in str(err.value)


def test_compressed_members_and_paths_outside_the_root_are_refused(program: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(program) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    deflated = tmp_path / "deflated.pt2"
    with zipfile.ZipFile(deflated, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(ModelLoadError, match="compressed"):
        check_pt2_archive(deflated)
    root = next(iter(members)).split("/", 1)[0]
    climbing = _rewrite(program, tmp_path / "climb.pt2", lambda m: m.update({f"{root}/../evil": b"1"}))
    with pytest.raises(ModelLoadError, match="unexpected path"):
        check_pt2_archive(climbing)
    second_root = _rewrite(program, tmp_path / "roots.pt2", lambda m: m.update({"other/evil": b"1"}))
    with pytest.raises(ModelLoadError, match="top-level folders"):
        check_pt2_archive(second_root)


@pytest.mark.parametrize(
    "expr",
    [
        "s0",
        "s77 + 1",
        "2*s0 - 1",
        "Symbol('s77', positive=True, integer=True)",
        "Max(1, FloorDiv(s0, 2))",
        "Eq(Mod(s0, 2), 0)",
        "Piecewise((s0, Gt(s0, 1)), (1, True))",
        "-s1 <= 3",
        "s0**2 + s1**-1",
    ],
)
def test_symbolic_expressions_torch_writes_pass(expr: str) -> None:
    check_sym_expr(expr)


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('id')",
        "s0.__class__",
        "open('x')",
        "(lambda: 1)()",
        "[c for c in ()]",
        "Symbol('a b')",
        "Symbol('s0', evil=True)",
        "s0[0]",
        "getattr(s0, 'x')",
        "s0 ! 2",
        "10**10**10 + s0",
        "s0**(2*s0)",
        "s0 + 123456789012345678901234567890",
    ],
)
def test_symbolic_expressions_that_could_run_code_are_refused(expr: str) -> None:
    with pytest.raises(ModelLoadError, match="symbolic expression"):
        check_sym_expr(expr)


# ---------------------------------------------------------------------------------------------- the checked copy


@pytest.mark.usefixtures("restore_threads")
def test_torch_is_given_a_fresh_copy_made_of_the_checked_bytes(program: Path, tmp_path: Path) -> None:
    """F2, second layer: torch never opens the received file. The copy holds the same members with the same
    bytes, data aligned to 64 bytes like torch.export.save's, and is gone once torch has read it."""
    copy = write_checked_pt2(program, tmp_path)
    assert copy.parent == tmp_path and copy.name.startswith(".checked-")
    with zipfile.ZipFile(program) as original, zipfile.ZipFile(copy) as fresh:
        assert {i.filename: original.read(i) for i in original.infolist()} == {
            i.filename: fresh.read(i) for i in fresh.infolist()
        }
    with copy.open("rb") as f:
        assert all(m.data_offset % 64 == 0 for m in read_members(f, methods=frozenset({0}), max_members=100))
    loaded = torch.export.load(copy)
    assert [n.name for n in loaded.graph.nodes] == [n.name for n in torch.export.load(program).graph.nodes]
    folder = tmp_path / "job"
    folder.mkdir()
    model = folder / "model.pt2"
    model.write_bytes(program.read_bytes())
    _load(model).close()
    assert sorted(p.name for p in folder.iterdir()) == ["model.pt2"], "the checked copy was left behind"


@pytest.mark.usefixtures("restore_threads")
def test_extra_files_are_left_out_of_the_copy(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    torch.export.save(
        torch.export.export(TwoOut(), (torch.randn(2, 3), torch.randn(2, 3))), path, extra_files={"n": "x"}
    )
    copy = write_checked_pt2(path, tmp_path)
    with zipfile.ZipFile(path) as original, zipfile.ZipFile(copy) as fresh:
        dropped = set(original.namelist()) - set(fresh.namelist())
    assert len(dropped) == 1 and "/extra/" in dropped.pop()
    assert len(_load(path).run({"a": np.ones((2, 3), np.float32), "b": np.ones((2, 3), np.float32)})) == 2


def test_an_archive_behind_other_bytes_is_refused(program: Path, tmp_path: Path) -> None:
    """zipfile reads such a file (it shifts every offset); miniz reads the directory where the end record
    says. Refused for its layout, before any content is looked at."""
    shifted = tmp_path / "model.pt2"
    shifted.write_bytes(b"\0" * 100 + program.read_bytes())
    with zipfile.ZipFile(shifted) as zf:
        assert zf.testzip() is None  # zipfile alone finds nothing wrong
    with pytest.raises(ModelLoadError, match="refused before torch opened the file") as err:
        BACKEND.prepare(shifted, _config())
    assert "data was prepended" in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"], "a refused archive left a partial copy"
