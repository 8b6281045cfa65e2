"""The agent's settings: one object per process, validated at construction.

Precedence: defaults < config file (TOML, `--config`) < environment (`EDGEBENCH_AGENT_<FIELD>`) < CLI flags.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 devices
    import tomli as tomllib

ENV_PREFIX = "EDGEBENCH_AGENT_"
MIN_TOKEN_CHARS = 16
#: gRPC worker threads that streams can never take: unary calls and health checks always find one.
MIN_SPARE_WORKERS = 4
#: An upload chunk is at most 1 MiB; a request must fit one with its framing.
MIN_REQUEST_BYTES = 2**20 + 64 * 2**10
DEFAULT_STREAMS_PER_CLIENT = 8
DEFAULT_WATCHERS_PER_CLIENT = 8
SANDBOX_MODES = ("auto", "required", "off")
#: Fractions of physical RAM for the default per-job memory limit and for the ceiling no job may exceed.
DEFAULT_JOB_MEMORY_FRACTION = 0.75
DEFAULT_MAX_JOB_MEMORY_FRACTION = 0.90
#: Settings that come from the command line only (never a config file or the environment).
_CLI_ONLY = frozenset({"config_file"})


class SettingsError(ValueError):
    """A setting is wrong; the message says which and how to fix it."""


def default_workdir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("edgebench")) / "agent"


def _ram_fraction(fraction: float) -> int:
    import psutil

    return int(psutil.virtual_memory().total * fraction)


@dataclass(frozen=True)
class AgentSettings:
    host: str = "127.0.0.1"
    port: int = 50551
    workdir: Path = dataclasses.field(default_factory=default_workdir)
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    reflection: bool = False
    insecure: bool = False
    max_artifact_bytes: int = 4 * 2**30
    max_cache_bytes: int = 20 * 2**30
    max_kept_results: int = 1000
    #: Default wall-time limit of a job that sets none; no job may ask for more than `max_job_wall_time_s`.
    job_wall_time_s: float = 900.0
    max_job_wall_time_s: float = 3600.0
    #: Default memory limit of a job that sets none (0 = 75% of physical RAM, resolved at construction);
    #: no job may ask for more than `max_job_memory_bytes` (0 = 90% of physical RAM).
    job_memory_bytes: int = 0
    max_job_memory_bytes: int = 0
    #: Job sandbox: "auto" (what the OS allows), "required" (refuse jobs it cannot contain) or "off".
    sandbox: str = "auto"
    #: A delegated cgroup v2 folder for job cgroups (None = the agent's own cgroup, when writable).
    cgroup_root: Path | None = None
    #: gRPC worker threads. Streaming RPCs hold one each while open, so they are capped below this.
    max_workers: int = 32
    #: Concurrent RunBenchmark/UploadArtifact streams per client (peer host; and certificate under mTLS)
    #: and in total; the total must leave MIN_SPARE_WORKERS threads for unary calls and health checks.
    #: 0 = the default: half of max_workers in total (16 of 32), 8 per client (at most the total).
    max_streams_per_client: int = 0
    max_streams_total: int = 0
    #: Concurrent health Watch streams (unauthenticated) per client and in total; 0 per client = the default,
    #: 8 (at most the total).
    max_health_watchers_per_client: int = 0
    max_health_watchers: int = 64
    #: Largest request message (gRPC's receive limit): an upload chunk (1 MiB) with room to spare.
    max_request_bytes: int = 2 * 2**20
    #: Largest job spec accepted by RunBenchmark (a real one is a few KiB).
    max_job_bytes: int = 64 * 2**10
    #: Jobs waiting behind the running one; more are refused with RESOURCE_EXHAUSTED "queue full".
    max_queued_jobs: int = 64
    #: Processes (not threads) one job may have at once; more kill the job (the kernel's pids.max, where
    #: delegated, bounds threads too).
    max_job_processes: int = 256
    #: Longest line a job process may write to its event pipe (a result with 1,000,000 samples is ~13 MB).
    max_event_line_bytes: int = 24 * 2**20
    #: CPUs job processes may use, e.g. "0" or "0-1,3" (Linux); empty = all. Emulates a smaller device and
    #: keeps measurements off the CPUs the agent's own threads use.
    cpu_affinity: str = ""
    #: Keep the next job's process started in advance (off the job's critical path); costs its idle memory.
    prestart_job_process: bool = True
    #: Let jobs ask the null runtime for hostile behaviours (agent.runtimes.faults). For tests of the
    #: sandbox only: never on a device someone else can send jobs to.
    fault_injection: bool = False
    #: The TOML file these settings were read from (command line only): a secret jobs must not read.
    config_file: Path | None = None

    def __post_init__(self) -> None:
        # Absolute: job processes run inside their job folder, so a relative work dir would not resolve there.
        object.__setattr__(self, "workdir", Path(self.workdir).expanduser().absolute())
        # "[::1]" (URL form) and "::1" name the same address; keep the bare form, bracket it when binding.
        if self.host.startswith("[") and self.host.endswith("]"):
            object.__setattr__(self, "host", self.host[1:-1])
        if not self.host:
            raise SettingsError("host must not be empty (e.g. 127.0.0.1, ::1 or 0.0.0.0)")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be 0..65535 (0 = pick a free one), got {self.port}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise SettingsError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key too")
        for name in ("token_file", "tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise SettingsError(f"--{name.replace('_', '-')} {path}: no such file")
        if self.max_artifact_bytes <= 0 or self.max_cache_bytes < self.max_artifact_bytes:
            raise SettingsError("need 0 < max_artifact_bytes <= max_cache_bytes")
        if self.cpu_affinity:
            parse_cpu_list(self.cpu_affinity)
        self._check_limits()
        if not self.authenticated and not self.is_loopback and not self.insecure:
            raise SettingsError(
                f"refusing to listen on {self.host} without authentication: anyone who can reach this port could "
                "run code on this device. Give --token-file (and ideally --tls-cert/--tls-key), or --insecure "
                "if you really mean it"
            )

    def _check_limits(self) -> None:
        if self.job_wall_time_s <= 0 or self.max_job_wall_time_s <= 0:
            raise SettingsError("job_wall_time_s (--job-timeout-s) and max_job_wall_time_s must be positive")
        if self.job_wall_time_s > self.max_job_wall_time_s:
            raise SettingsError(
                f"--job-timeout-s {self.job_wall_time_s:g} is over the ceiling --max-job-timeout-s "
                f"{self.max_job_wall_time_s:g}; lower the first or raise the second"
            )
        if self.job_memory_bytes < 0 or self.max_job_memory_bytes < 0:
            raise SettingsError("job_memory_bytes and max_job_memory_bytes must not be negative (0 = default)")
        if self.max_job_memory_bytes == 0:
            object.__setattr__(self, "max_job_memory_bytes", _ram_fraction(DEFAULT_MAX_JOB_MEMORY_FRACTION))
        if self.job_memory_bytes == 0:
            default = _ram_fraction(DEFAULT_JOB_MEMORY_FRACTION)
            object.__setattr__(self, "job_memory_bytes", min(default, self.max_job_memory_bytes))
        if self.job_memory_bytes > self.max_job_memory_bytes:
            raise SettingsError(
                f"--job-memory-mb {self.job_memory_bytes // 2**20} is over the ceiling --max-job-memory-mb "
                f"{self.max_job_memory_bytes // 2**20}; lower the first or raise the second"
            )
        if self.sandbox not in SANDBOX_MODES:
            raise SettingsError(f"--sandbox {self.sandbox!r}: must be one of {', '.join(SANDBOX_MODES)}")
        if self.cgroup_root is not None:
            root = Path(self.cgroup_root)
            if not root.is_dir():
                raise SettingsError(f"--cgroup-root {root}: no such directory")
            if not (root / "cgroup.controllers").is_file():
                raise SettingsError(
                    f"--cgroup-root {root}: not a cgroup v2 folder (no cgroup.controllers); give a delegated "
                    "cgroup v2 directory, e.g. one systemd creates for a unit with Delegate=yes"
                )
        if self.max_workers <= MIN_SPARE_WORKERS:
            raise SettingsError(f"--max-workers must be more than {MIN_SPARE_WORKERS}, got {self.max_workers}")
        if self.max_streams_total == 0:
            object.__setattr__(self, "max_streams_total", self.max_workers // 2)
        if self.max_streams_per_client == 0:
            object.__setattr__(self, "max_streams_per_client", min(DEFAULT_STREAMS_PER_CLIENT, self.max_streams_total))
        if self.max_health_watchers_per_client == 0:
            object.__setattr__(
                self, "max_health_watchers_per_client", min(DEFAULT_WATCHERS_PER_CLIENT, self.max_health_watchers)
            )
        for name in (
            "max_kept_results",
            "max_streams_total",
            "max_streams_per_client",
            "max_health_watchers",
            "max_health_watchers_per_client",
            "max_job_bytes",
            "max_queued_jobs",
            "max_job_processes",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_event_line_bytes < 2**20:
            raise SettingsError(f"--max-event-line-bytes must be at least 1 MiB, got {self.max_event_line_bytes}")
        if self.max_streams_total > self.max_workers - MIN_SPARE_WORKERS:
            raise SettingsError(
                f"--max-streams-total {self.max_streams_total} must leave at least {MIN_SPARE_WORKERS} of the "
                f"{self.max_workers} gRPC worker threads (--max-workers) for unary calls and health checks; "
                "lower it or raise --max-workers"
            )
        if self.max_streams_per_client > self.max_streams_total:
            raise SettingsError("--max-streams-per-client must not exceed --max-streams-total")
        if self.max_health_watchers_per_client > self.max_health_watchers:
            raise SettingsError("--max-health-watchers-per-client must not exceed --max-health-watchers")
        if self.max_request_bytes < MIN_REQUEST_BYTES:
            raise SettingsError(
                f"--max-request-bytes {self.max_request_bytes} is too small: an upload chunk is up to 1 MiB, "
                f"so it must be at least {MIN_REQUEST_BYTES}"
            )
        if self.max_job_bytes > self.max_request_bytes:
            raise SettingsError("--max-job-bytes must not exceed --max-request-bytes")

    @property
    def authenticated(self) -> bool:
        return self.token_file is not None or self.tls_client_ca is not None

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def plaintext_token(self) -> bool:
        """A token would cross the network unencrypted: token auth, no TLS, not loopback."""
        return self.token_file is not None and self.tls_cert is None and not self.is_loopback

    def address(self, port: int | None = None) -> str:
        """`host:port` as gRPC and clients want it: IPv6 literals in brackets ("[::1]:50551")."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port if port is None else port}"

    @property
    def secret_paths(self) -> tuple[Path, ...]:
        """Files a job must never read: the token, TLS key, certificate and client CA, the config file."""
        names = ("token_file", "tls_cert", "tls_key", "tls_client_ca", "config_file")
        paths = (getattr(self, name) for name in names)
        return tuple(Path(p).expanduser().absolute() for p in paths if p is not None)

    def read_token(self) -> str | None:
        """The shared token, checked for length; warns (returns a note) if the file is readable by others."""
        if self.token_file is None:
            return None
        token = Path(self.token_file).read_text().strip()
        if len(token) < MIN_TOKEN_CHARS:
            raise SettingsError(
                f"token in {self.token_file} is {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return token

    def token_file_exposed(self) -> bool:
        return self.token_file is not None and bool(os.stat(self.token_file).st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """'0-2,5' -> (0, 1, 2, 5); raises SettingsError naming the problem."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise SettingsError(f"cpu_affinity {text!r} must look like '0' or '0-1,3'") from None
    if not cpus or min(cpus) < 0:
        raise SettingsError(f"cpu_affinity {text!r} names no valid CPU")
    return tuple(sorted(cpus))


def _coerce(field: dataclasses.Field[Any], raw: Any) -> Any:
    kind = str(field.type)
    if raw is None:
        return None
    if "Path" in kind:
        return Path(str(raw)).expanduser()
    if "bool" in kind:
        return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes", "on")
    if "int" in kind:
        return int(raw)
    if "float" in kind:
        return float(raw)
    return str(raw)


def load_settings(config_file: Path | None = None, env: dict[str, str] | None = None, **cli: Any) -> AgentSettings:
    """Merge the layers (CLI values of None mean "not given") and validate."""
    env = dict(os.environ) if env is None else env
    fields = {f.name: f for f in dataclasses.fields(AgentSettings) if f.name not in _CLI_ONLY}
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"config file {config_file}: {exc}") from None
        unknown = set(data) - set(fields)
        if unknown:
            raise SettingsError(
                f"config file {config_file}: unknown settings {sorted(unknown)}; known: {', '.join(sorted(fields))}"
            )
        values.update(data)
    for name in fields:
        if (raw := env.get(ENV_PREFIX + name.upper())) is not None:
            values[name] = raw
    values.update({k: v for k, v in cli.items() if v is not None})
    try:
        return AgentSettings(
            **{k: _coerce(fields[k], v) for k, v in values.items()},
            config_file=Path(config_file).absolute() if config_file is not None else None,
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SettingsError):
            raise
        raise SettingsError(f"invalid setting: {exc}") from None
