"""Hypothesis strategies for fuzzing a real agent: job specs, upload sequences and hostile job plans.

Strategies produce what a hostile or careless client can put on the wire (valid UTF-8 only: the protobuf
library refuses anything else before it is sent). Digests are symbolic where they depend on the agent's
store (`Refs` holds the real ones); job ids are resolved when the example runs (`IdSpec`), so a replayed
example gets a fresh id instead of re-attaching to the earlier run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from agent.runtimes import REGISTRY
from protos.edgebench.agent.v1 import agent_pb2 as pb

T = TypeVar("T")
MIB = 2**20
#: The characters a valid job id may use (agent/validate.py JOB_ID_RE).
ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@/-"
TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
ODD_TEXT = st.one_of(
    TEXT,
    st.sampled_from(
        ["", " ", "..", "../../etc/passwd", "a/b", "\x00", "\n\r", "\u202eevil", "model.json", "MODEL.JSON",
         "model.json.", ".hidden", "CON", "x" * 201, "é" * 150, "\U0001f600" * 10]
    ),
)


def weighted(*pairs: tuple[int, SearchStrategy[T]]) -> SearchStrategy[T]:
    """One of the strategies, each drawn with its relative weight (the first is what shrinking aims for)."""
    choices = [s for w, s in pairs for _ in range(w)]
    return st.integers(0, len(choices) - 1).flatmap(lambda i: choices[i])


@dataclass(frozen=True)
class Refs:
    """Digests on the agent: a null-runtime model, an .npz data set, random bytes; and one it lacks."""

    null: str
    dataset: str
    garbage: str
    missing: str


@dataclass(frozen=True)
class IdSpec:
    """`fresh`: a new valid id ending in `text`; `raw`: `text` itself (may be invalid or collide);
    `reuse`: the id of an earlier accepted job (index `pick` into them), with this example's contents."""

    kind: str
    text: str = ""
    pick: int = 0


def digests(refs: Refs) -> SearchStrategy[str]:
    return weighted(
        (3, st.sampled_from([refs.null, refs.dataset, refs.garbage, refs.missing])),
        (1, st.sampled_from(["", refs.null.upper(), refs.null[:63], refs.null + "0", " " + refs.null[1:]])),
        (1, st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)),
        (1, ODD_TEXT),
    )


def _duration(msg: object, good: SearchStrategy[int], odd: bool, draw: st.DrawFn) -> None:
    """Set a Duration from milliseconds, or (odd) from any seconds/nanos pair, normalized or not."""
    if odd:
        msg.seconds = draw(st.integers(-(2**40), 2**40))  # type: ignore[attr-defined]
        msg.nanos = draw(st.integers(-(2**31), 2**31 - 1))  # type: ignore[attr-defined]
    else:
        msg.FromMilliseconds(draw(good))  # type: ignore[attr-defined]


NUMBERS_BAD = st.sampled_from(["-1", "nan", "inf", "1e300", "abc", "", "9" * 40, "0x10", " 1 "])
HOSTILE = st.sampled_from(
    ["close_pipe", "close_pipe:16", "nested_event", "flood:0.1", "escape:8", "fork:8", "fork:300", "signal",
     "probe", "bogus", "fork:x", "escape:-1", "flood:", ""]
)


def null_options(wild: bool) -> SearchStrategy[dict[str, str]]:
    """The null runtime's options and hostile behaviours, with small arguments (odd ones when `wild`)."""

    def num(*good: str) -> SearchStrategy[str]:
        return weighted((4, st.sampled_from(good)), (1, NUMBERS_BAD)) if wild else st.sampled_from(good)

    known = st.fixed_dictionaries(
        {},
        optional={
            "hostile": HOSTILE,
            "crash": st.sampled_from(["load", "run", "never"]),
            "hang_s": num("0", "0.3", "1", "30"),
            "allocate_mb": num("0", "8", "64", "400"),
            "latency_ns": num("0", "1000", "1000000", "100000000"),
            "sleep_ns": num("0", "100000", "50000000"),
            "load_ns": num("0", "1000000", "2000000000"),
        },
    )
    if not wild:
        return known
    junk = st.dictionaries(ODD_TEXT, ODD_TEXT, max_size=3)
    bloat = st.sampled_from(
        [{f"k{i}": "v" for i in range(70)}, {"big": "x" * 1100}, {"x" * 1100: "1"},
         {f"k{i}": "v" * 1024 for i in range(64)}]  # over 64 KiB in all: RESOURCE_EXHAUSTED
    )
    return weighted((6, st.tuples(known, junk).map(lambda kv: {**kv[1], **kv[0]})), (1, bloat))


#: The parts of a job a `wild` spec may break (one to three of them at a time, so each check is reached).
JOB_FIELDS = ("model", "format", "companions", "runtime", "threads", "provider", "precision", "options", "inputs",
              "batch", "accuracy", "iterations", "durations", "ci", "wall", "memory")


@st.composite
def job_specs(draw: st.DrawFn, refs: Refs) -> tuple[IdSpec, pb.BenchmarkJob]:
    """A job as a client could send it: half the time well-formed but for its options (which ask for
    crashes, hangs and hostile behaviours), half the time `wild`: one to three of its parts drawn from
    anything the wire can carry (out of contract or merely odd: a real runtime for a null model, a huge
    but valid plan)."""
    bad = draw(st.sets(st.sampled_from(JOB_FIELDS), min_size=1, max_size=3)) if draw(st.booleans()) else set()

    def pick(part: str, good: SearchStrategy[T], odd: SearchStrategy[T]) -> T:
        return draw(odd if part in bad else good)

    id_spec = draw(
        weighted(
            (6, st.builds(IdSpec, st.just("fresh"), st.text(alphabet=ID_CHARS, max_size=20))),
            (2, st.builds(IdSpec, st.just("raw"), st.one_of(st.text(alphabet=ID_CHARS, max_size=210), ODD_TEXT))),
            (1, st.builds(IdSpec, st.just("reuse"), st.just(""), st.integers(0, 10_000))),
        )
    )
    job = pb.BenchmarkJob(job_id="placeholder")
    job.model.sha256 = pick("model", st.just(refs.null), digests(refs))
    formats = st.sampled_from([*pb.ModelFormat.values(), 99, -3])
    job.model.format = pick("format", st.just(pb.MODEL_FORMAT_NULL), formats)  # type: ignore[assignment]
    good_companion = st.builds(
        pb.CompanionFile, name=st.sampled_from(["weights.bin", "extra.data", "a_b-c.txt"]),
        sha256=st.sampled_from([refs.null, refs.garbage]),
    )
    any_companion = st.builds(pb.CompanionFile, name=ODD_TEXT, sha256=digests(refs))
    job.model.companions.extend(
        pick("companions", st.lists(good_companion, max_size=1), st.lists(any_companion, min_size=1, max_size=3))
    )
    rt = job.runtime
    rt.name = pick("runtime", st.just("null"), st.one_of(st.sampled_from(sorted(REGISTRY)), ODD_TEXT))
    rt.intra_op_threads = pick("threads", st.integers(0, 2), st.integers(0, 2**32 - 1))
    rt.inter_op_threads = pick("threads", st.integers(0, 2), st.integers(0, 2**32 - 1))
    rt.execution_provider = pick("provider", st.just(""), st.one_of(ODD_TEXT, st.just("x" * 1025)))
    rt.device = pick("provider", st.just(""), ODD_TEXT)
    rt.precision_hint = pick("precision", st.just(0), st.integers(-2, 8))  # type: ignore[assignment]
    rt.options.update(draw(null_options("options" in bad)))
    source = pick("inputs", st.just("generated"), st.sampled_from(["generated", "dataset", "dataset-missing", "empty",
                                                                   "none"]))
    if source == "generated":
        job.inputs.generated.seed = draw(st.integers(0, 2**64 - 1))
        job.inputs.generated.num_batches = pick("inputs", st.integers(1, 4), st.integers(0, 300))
    elif source != "none":
        job.inputs.dataset_sha256 = {"dataset": refs.dataset, "dataset-missing": refs.missing, "empty": ""}[source]
    job.inputs.batch_size = pick("batch", st.integers(1, 4), st.sampled_from([0, 33, 64, 65_536, 65_537, 2**32 - 1]))
    job.accuracy_pass = pick("accuracy", st.just(False), st.booleans())
    job.memory_pass = draw(st.booleans())
    plan = job.plan
    plan.warmup_iterations = pick("iterations", st.integers(0, 3), st.integers(0, 2**32 - 1))
    plan.min_iterations = pick("iterations", st.integers(1, 10), st.integers(0, 2**32 - 1))
    plan.max_iterations = pick(
        "iterations", st.sampled_from([0, plan.min_iterations, plan.min_iterations + 50]), st.integers(0, 2**32 - 1)
    )
    odd = "durations" in bad
    _duration(plan.warmup_duration, st.integers(0, 20), odd, draw)
    _duration(plan.min_duration, st.integers(0, 50), odd, draw)
    _duration(plan.max_duration, st.integers(100, 1000), odd, draw)
    plan.target_relative_ci = pick("ci", st.sampled_from([0.0, 0.05]), st.floats(allow_nan=True, allow_infinity=True))
    _duration(job.limits.wall_time, st.sampled_from([0, 1000, 2000, 3000]), "wall" in bad, draw)
    job.limits.memory_bytes = pick(
        "memory", st.sampled_from([0, 128 * MIB, 256 * MIB]), st.sampled_from([1, 4096, 64 * MIB, 2**40, 2**64 - 1])
    )
    return id_spec, job


# ---------------------------------------------------------------------------------------------- uploads

SIZES = [0, 1, 4096, 300_000, MIB, MIB + 7, 2_500_000]
#: Chunk patterns, cycled over the bytes to send: zero-length chunks, odd sizes, the 1 MiB cap and past it.
CHUNKINGS = [(MIB,), (65_536,), (0, 100_000), (1, 7, 300_000), (MIB + 1,), (3 * MIB,)]


@dataclass(frozen=True)
class BlobSpec:
    """One artifact of an upload example: a null-runtime model padded to about `size`, or random bytes."""

    kind: str
    size: int


@dataclass(frozen=True)
class UploadOp:
    """One client action on blob `i` (of the example's pool).

    * `full`: header at offset 0, then every byte in `chunking`;
    * `partial`: header at offset 0, `fraction` of the bytes, then `ending`: half-close or cancel the call;
    * `resume`: ask GetUploadStatus, then send from `offset` (`committed`, `zero`, `past`: committed + 1,
      `beyond`: past the declared size) to the end;
    * `wrong`: header of blob i with other bytes (`ending` says which: `other` blob j, `flip` one byte,
      `short`/`long` sizes);
    * `header`: a broken stream (`ending`: bad digest, chunk first, two headers, empty, too large, offset >
      size);
    * `concurrent`: `count` uploads of blob i at once;
    * `query`: FindMissingArtifacts / GetUploadStatus with odd digests (`ending`);
    * `pressure`: a job waits in the queue while uploads push the store past its cap.
    """

    op: str
    i: int = 0
    j: int = 0
    chunking: tuple[int, ...] = (MIB,)
    fraction: float = 0.5
    ending: str = ""
    count: int = 2


@dataclass(frozen=True)
class UploadPlan:
    seed: int
    pool: tuple[BlobSpec, ...]
    ops: tuple[UploadOp, ...]


def _upload_op(pool_size: int) -> SearchStrategy[UploadOp]:
    i = st.integers(0, pool_size - 1)
    chunking = st.sampled_from(CHUNKINGS)
    return weighted(
        (3, st.builds(UploadOp, st.just("full"), i, chunking=chunking)),
        (3, st.builds(UploadOp, st.just("partial"), i, chunking=chunking, fraction=st.floats(0, 1),
                      ending=st.sampled_from(["close", "cancel"]))),
        (3, st.builds(UploadOp, st.just("resume"), i, chunking=chunking,
                      ending=st.sampled_from(["committed", "committed", "zero", "past", "beyond"]))),
        (2, st.builds(UploadOp, st.just("wrong"), i, i, ending=st.sampled_from(["other", "flip", "short", "long"]))),
        (1, st.builds(UploadOp, st.just("header"), ending=st.sampled_from(
            ["bad-digest", "chunk-first", "two-headers", "empty", "too-large", "offset-past-size"]))),
        (2, st.builds(UploadOp, st.just("concurrent"), i, count=st.integers(2, 3))),
        (1, st.builds(UploadOp, st.just("query"), ending=st.sampled_from(["odd", "many", "status-odd"]))),
        (1, st.builds(UploadOp, st.just("pressure"))),
    )


@st.composite
def upload_plans(draw: st.DrawFn) -> UploadPlan:
    pool = tuple(
        draw(st.lists(st.builds(BlobSpec, st.sampled_from(["model", "bytes"]), st.sampled_from(SIZES)),
                      min_size=1, max_size=3))
    )
    ops = tuple(draw(st.lists(_upload_op(len(pool)), min_size=1, max_size=8)))
    return UploadPlan(draw(st.integers(0, 2**32 - 1)), pool, ops)


# ---------------------------------------------------------------------------------------------- hostile


@dataclass(frozen=True)
class HostileJob:
    """A well-formed null job acting hostile, and what its client does: `wait` for the result, `drop` the
    stream after `delay_ms` (then fetch the result and submit again), `cancel` it after `delay_ms`, submit
    it from two clients at once (`twin`), or submit another job under the same id at the same time
    (`clash`)."""

    options: tuple[tuple[str, str], ...]
    wall_ms: int
    memory_mb: int
    action: str
    delay_ms: int


HOSTILE_ONLY = st.sampled_from(
    ["close_pipe", "close_pipe:16", "nested_event", "flood:0.1", "flood:0.3", "escape:8", "escape:32", "fork:8",
     "fork:64", "fork:300", "signal", "probe"]
)


@st.composite
def hostile_jobs(draw: st.DrawFn) -> HostileJob:
    options = draw(null_options(wild=False))
    if draw(st.integers(0, 3)):
        options["hostile"] = draw(HOSTILE_ONLY)
    return HostileJob(
        tuple(sorted(options.items())),
        draw(st.sampled_from([800, 1500, 3000])),
        draw(st.sampled_from([0, 96, 200])),
        draw(st.sampled_from(["wait", "drop", "cancel", "twin", "clash"])),
        draw(st.integers(0, 1500)),
    )


hostile_plans = st.tuples(st.lists(hostile_jobs(), min_size=1, max_size=3), st.booleans())
