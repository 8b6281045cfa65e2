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


class SettingsError(ValueError):
    """A setting is wrong; the message says which and how to fix it."""


def default_workdir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("edgebench")) / "agent"


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
    job_wall_time_s: float = 900.0
    job_memory_bytes: int = 0
    max_workers: int = 32
    #: CPUs job processes may use, e.g. "0" or "0-1,3" (Linux); empty = all. Emulates a smaller device and
    #: keeps measurements off the CPUs the agent's own threads use.
    cpu_affinity: str = ""
    #: Keep the next job's process started in advance (off the job's critical path); costs its idle memory.
    prestart_job_process: bool = True

    def __post_init__(self) -> None:
        # Absolute: job processes run inside their job folder, so a relative work dir would not resolve there.
        object.__setattr__(self, "workdir", Path(self.workdir).expanduser().absolute())
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
        if self.job_wall_time_s <= 0:
            raise SettingsError("job_wall_time_s must be positive")
        if not self.authenticated and not self.is_loopback and not self.insecure:
            raise SettingsError(
                f"refusing to listen on {self.host} without authentication: anyone who can reach this port could "
                "run code on this device. Give --token-file (and ideally --tls-cert/--tls-key), or --insecure "
                "if you really mean it"
            )

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
    fields = {f.name: f for f in dataclasses.fields(AgentSettings)}
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
        return AgentSettings(**{k: _coerce(fields[k], v) for k, v in values.items()})
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SettingsError):
            raise
        raise SettingsError(f"invalid setting: {exc}") from None
