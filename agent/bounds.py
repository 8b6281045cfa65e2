"""Bounds on what clients can make the agent hold: concurrent streams, health watchers and job size.

Streaming RPCs hold one gRPC worker thread each for as long as they are open (RunBenchmark waits for its
job's events; UploadArtifact waits for chunks; reflection waits for requests), so idle streams could take
every thread and leave none for unary calls or health checks. `LimitInterceptor` caps them per client and
in total, below the thread pool, and refuses the excess at once with RESOURCE_EXHAUSTED naming the limit
and its flag. Health `Watch` streams hold no thread but some memory each, and need no token, so they are
capped the same way, separately.

A *client* is the peer's IP address (all connections from one host count together; the port is not part
of it) and, under mutual TLS, also its certificate identity: a stream counts against both.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn

import grpc

from protos.edgebench.agent.v1 import agent_pb2 as pb

#: The one streaming RPC that holds no worker thread (the health servicer answers it without blocking).
WATCH_METHOD = "/grpc.health.v1.Health/Watch"

#: Contract limits on a job's repeated and free-text fields (a real job needs a handful of each).
MAX_JOB_OPTIONS = 64
MAX_JOB_COMPANIONS = 64
MAX_JOB_TEXT_CHARS = 1024


@dataclass(frozen=True)
class Limit:
    """A per-client and a total cap on one kind of open stream, with the flags that set them."""

    what: str
    per_client: int
    total: int
    per_client_flag: str
    total_flag: str


class Slots:
    """Counts open streams per client key and in total; `acquire` is all-or-nothing. Thread-safe, no I/O."""

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._per_key: Counter[str] = Counter()
        self._total = 0

    def acquire(self, keys: Sequence[str]) -> str | None:
        """Take one slot for every key and one of the total; return None, or why not (nothing is taken)."""
        lim = self.limit
        with self._lock:
            if self._total >= lim.total:
                return (
                    f"too many open {lim.what} on this agent: {self._total} already open, the limit is "
                    f"{lim.total} ({lim.total_flag}); retry later or raise the limit"
                )
            for key in keys:
                if self._per_key[key] >= lim.per_client:
                    return (
                        f"too many open {lim.what} from this client ({key}): {self._per_key[key]} already open, "
                        f"the limit is {lim.per_client} ({lim.per_client_flag}); close some or raise the limit"
                    )
            for key in keys:
                self._per_key[key] += 1
            self._total += 1
            return None

    def release(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._per_key[key] -= 1
                if self._per_key[key] <= 0:
                    del self._per_key[key]
            self._total -= 1

    def open_count(self) -> int:
        with self._lock:
            return self._total


def peer_host(peer: str) -> str:
    """'ipv4:10.0.0.5:5123' -> '10.0.0.5', 'ipv6:[::1]:5123' -> '::1'; other forms are kept whole."""
    scheme, _, rest = peer.partition(":")
    if scheme in ("ipv4", "ipv6") and ":" in rest:
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


def client_keys(context: grpc.ServicerContext) -> list[str]:
    """The keys one call counts against: its peer's host and, under mutual TLS, its certificate identity."""
    keys = [peer_host(str(context.peer()))]
    identities = context.peer_identities()
    if identities:
        keys.append("cert " + b",".join(identities).decode(errors="replace"))
    return keys


class LimitInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Wraps every streaming RPC (RunBenchmark, UploadArtifact, reflection: `streams`) and health Watch
    (`watchers`) so that each holds a slot while open, or is refused at once."""

    def __init__(self, streams: Limit, watchers: Limit) -> None:
        self.streams = Slots(streams)
        self.watchers = Slots(watchers)

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        if details.method == WATCH_METHOD and handler.unary_stream is not None:
            return _bounded_watch(handler, self.watchers)
        if handler.unary_stream is not None:
            return _bounded_response_stream(handler, self.streams)
        if handler.stream_unary is not None:
            return _bounded_request_stream(handler, self.streams)
        if handler.stream_stream is not None:
            return _bounded_bidi_stream(handler, self.streams)
        return handler


def _refuse(context: grpc.ServicerContext, slots: Slots) -> list[str]:
    """Take a slot for this call's client, or abort the call with RESOURCE_EXHAUSTED saying which limit."""
    keys = client_keys(context)
    refusal = slots.acquire(keys)
    if refusal is not None:
        busy(context, refusal)
    return keys


#: Trailing metadata gRPC clients read as "retry after this many milliseconds" (gRPC's retry pushback).
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
RETRY_PUSHBACK_MS = 2000


def busy(context: grpc.ServicerContext, message: str) -> NoReturn:
    """Refuse a call the agent is too busy for right now (a stream or queue limit), with RESOURCE_EXHAUSTED
    and a retry pushback: the coordinator waits and sends it again instead of failing the job."""
    context.set_trailing_metadata(((RETRY_PUSHBACK_KEY, str(RETRY_PUSHBACK_MS)),))
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)  # raises
    raise AssertionError("unreachable: ServicerContext.abort raises")


def _bounded_response_stream(handler: Any, slots: Slots) -> Any:
    behavior = handler.unary_stream

    def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        # The slot is released when this generator ends, which is when gRPC stops iterating it and so
        # frees the thread: the count follows threads, not RPC status.
        keys = _refuse(context, slots)
        try:
            yield from behavior(request, context)
        finally:
            slots.release(keys)

    return grpc.unary_stream_rpc_method_handler(
        run, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


def _bounded_request_stream(handler: Any, slots: Slots) -> Any:
    behavior = handler.stream_unary

    def run(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        keys = _refuse(context, slots)
        try:
            return behavior(request_iterator, context)
        finally:
            slots.release(keys)

    return grpc.stream_unary_rpc_method_handler(
        run, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


def _bounded_bidi_stream(handler: Any, slots: Slots) -> Any:
    behavior = handler.stream_stream

    def run(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        keys = _refuse(context, slots)
        try:
            yield from behavior(request_iterator, context)
        finally:
            slots.release(keys)

    return grpc.stream_stream_rpc_method_handler(
        run, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


def _bounded_watch(handler: Any, slots: Slots) -> Any:
    behavior = handler.unary_stream

    def watch(request: Any, context: grpc.ServicerContext, send_response_callback: Any = None) -> Any:
        # The standard health servicer answers Watch without holding a thread (it returns at once and
        # pushes updates through the callback), so the slot is released when the RPC terminates.
        keys = _refuse(context, slots)
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                slots.release(keys)

        if not context.add_callback(release):
            release()  # the call already ended
        try:
            if send_response_callback is None:
                return behavior(request, context)
            return behavior(request, context, send_response_callback=send_response_callback)
        except BaseException:
            release()
            raise

    # Keep the servicer's non-blocking mode: gRPC looks for this attribute on the behavior it calls.
    watch.experimental_non_blocking = getattr(behavior, "experimental_non_blocking", False)  # type: ignore[attr-defined]
    return grpc.unary_stream_rpc_method_handler(
        watch, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


def job_size_problem(job: pb.BenchmarkJob, max_job_bytes: int) -> str | None:
    """Why a job message is too large to accept (RESOURCE_EXHAUSTED), or None."""
    size = job.ByteSize()
    if size > max_job_bytes:
        return (
            f"job message is {size:,} bytes, over the agent's limit of {max_job_bytes:,} (--max-job-bytes); "
            "a job spec needs a few kilobytes: send models and data as artifacts, not inside the job"
        )
    return None


def job_shape_problems(job: pb.BenchmarkJob) -> list[str]:
    """Counts and lengths of a job's free-form fields over the contract limits (INVALID_ARGUMENT)."""
    problems: list[str] = []
    if len(job.runtime.options) > MAX_JOB_OPTIONS:
        problems.append(f"runtime.options has {len(job.runtime.options)} entries; at most {MAX_JOB_OPTIONS}")
    if len(job.model.companions) > MAX_JOB_COMPANIONS:
        problems.append(f"model.companions has {len(job.model.companions)} files; at most {MAX_JOB_COMPANIONS}")
    texts = {
        "runtime.name": job.runtime.name,
        "runtime.execution_provider": job.runtime.execution_provider,
        "runtime.device": job.runtime.device,
        **{f"runtime.options key {k[:40]!r}": k for k in job.runtime.options},
        **{f"runtime.options[{k[:40]!r}]": v for k, v in job.runtime.options.items()},
    }
    for name, text in texts.items():
        if len(text) > MAX_JOB_TEXT_CHARS:
            problems.append(f"{name} is {len(text):,} characters; at most {MAX_JOB_TEXT_CHARS}")
    return problems


class _Undecodable:
    """Stands in for a request message that did not parse; the handler refuses it (see DecodeGuard)."""

    def __init__(self, error: str) -> None:
        self.error = error


class DecodeGuard(grpc.ServerInterceptor):  # type: ignore[misc]
    """A request that is not a valid protobuf message breaks the contract: INVALID_ARGUMENT with a message,
    like any malformed job. Without this, gRPC answers INTERNAL ("Exception deserializing request!") and logs
    a traceback per request, before any servicer code sees it."""

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        method = details.method

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as exc:  # DecodeError and whatever a generated class raises on bad bytes
                return _Undecodable(f"{type(exc).__name__}: {str(exc)[:200]}")

        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request to {method} is not a valid protobuf message ({request.error}); check that the "
                    "client speaks this agent's protocol version",
                )
            return request

        def checked_stream(requests: Any, context: grpc.ServicerContext) -> Any:
            for request in requests:
                yield checked(request, context)

        # One of the four behaviours is set; streaming requests are checked one message at a time.
        for kind, check in (
            ("unary_unary", checked),
            ("unary_stream", checked),
            ("stream_unary", checked_stream),
            ("stream_stream", checked_stream),
        ):
            inner = getattr(handler, kind)
            if inner is not None:
                wrapped = partial(_call_checked, inner, check)
                return handler._replace(request_deserializer=deserialize, **{kind: wrapped})
        return handler


def _call_checked(inner: Callable[..., Any], check: Callable[..., Any], request: Any, context: Any) -> Any:
    return inner(check(request, context), context)
