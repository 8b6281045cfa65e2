"""Tests of agent.settings: layer precedence, validation, and the authentication guard."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.settings import MIN_TOKEN_CHARS, AgentSettings, SettingsError, load_settings

TOKEN = "s3cret-token-0123456789"


def token_file(tmp_path: Path, text: str = TOKEN, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(env={}, workdir=tmp_path)
    assert s.host == "127.0.0.1"
    assert s.port == 50551
    assert s.workdir == tmp_path
    assert s.token_file is None
    assert not s.insecure
    assert s.is_loopback
    assert not s.authenticated
    assert s.read_token() is None


def test_precedence_defaults_config_env_cli(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        'port = 1000\nmax_workers = 8\nmax_kept_results = 50\njob_wall_time_s = 60.0\nhost = "localhost"\n',
    )
    env = {"EDGEBENCH_AGENT_PORT": "2000", "EDGEBENCH_AGENT_MAX_WORKERS": "16", "UNRELATED": "x"}
    s = load_settings(cfg, env=env, workdir=tmp_path, port=3000, max_kept_results=None)
    assert s.port == 3000  # CLI beats env and config
    assert s.max_workers == 16  # env beats config
    assert s.max_kept_results == 50  # config beats default; a CLI value of None means "not given"
    assert s.job_wall_time_s == 60.0
    assert s.host == "localhost"
    assert s.max_cache_bytes == AgentSettings.max_cache_bytes  # untouched default


def test_env_without_cli_beats_config(tmp_path: Path) -> None:
    cfg = config(tmp_path, "port = 1000\n")
    s = load_settings(cfg, env={"EDGEBENCH_AGENT_PORT": "2000"}, workdir=tmp_path)
    assert s.port == 2000


def test_env_values_are_coerced(tmp_path: Path) -> None:
    env = {
        "EDGEBENCH_AGENT_REFLECTION": "yes",
        "EDGEBENCH_AGENT_JOB_WALL_TIME_S": "12.5",
        "EDGEBENCH_AGENT_MAX_ARTIFACT_BYTES": "1024",
        "EDGEBENCH_AGENT_WORKDIR": str(tmp_path / "wd"),
    }
    s = load_settings(env=env)
    assert s.reflection is True
    assert s.job_wall_time_s == 12.5
    assert s.max_artifact_bytes == 1024
    assert s.workdir == tmp_path / "wd"
    assert not load_settings(env={"EDGEBENCH_AGENT_REFLECTION": "0"}, workdir=tmp_path).reflection


def test_unknown_config_key_lists_the_known_ones(tmp_path: Path) -> None:
    cfg = config(tmp_path, "prot = 1\n")
    with pytest.raises(SettingsError, match=r"unknown settings \['prot'\]") as info:
        load_settings(cfg, env={}, workdir=tmp_path)
    for known in ("host", "port", "token_file", "max_cache_bytes"):
        assert known in str(info.value)


def test_unreadable_config_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="config file"):
        load_settings(config(tmp_path, "port = = 1"), env={}, workdir=tmp_path)
    with pytest.raises(SettingsError, match="config file"):
        load_settings(tmp_path / "missing.toml", env={}, workdir=tmp_path)


def test_malformed_value_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="invalid setting"):
        load_settings(env={"EDGEBENCH_AGENT_PORT": "fifty"}, workdir=tmp_path)
    with pytest.raises(SettingsError, match=r"port must be 0\.\.65535"):
        load_settings(env={}, workdir=tmp_path, port=70000)


def test_non_loopback_without_auth_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="without authentication") as info:
        load_settings(env={}, workdir=tmp_path, host="0.0.0.0")
    assert "--token-file" in str(info.value)
    assert "--insecure" in str(info.value)


def test_non_loopback_from_env_without_auth_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="--token-file"):
        load_settings(env={"EDGEBENCH_AGENT_HOST": "192.168.1.20"}, workdir=tmp_path)


def test_insecure_allows_non_loopback(tmp_path: Path) -> None:
    s = load_settings(env={}, workdir=tmp_path, host="0.0.0.0", insecure=True)
    assert s.insecure
    assert not s.is_loopback
    s = load_settings(env={"EDGEBENCH_AGENT_INSECURE": "true"}, workdir=tmp_path, host="::")
    assert s.insecure


def test_token_file_allows_non_loopback(tmp_path: Path) -> None:
    s = load_settings(env={}, workdir=tmp_path, host="0.0.0.0", token_file=token_file(tmp_path))
    assert s.authenticated
    assert s.read_token() == TOKEN


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
def test_loopback_without_auth_is_allowed(tmp_path: Path, host: str) -> None:
    s = load_settings(env={}, workdir=tmp_path, host=host)
    assert s.is_loopback
    assert not s.authenticated


def test_short_token_is_rejected(tmp_path: Path) -> None:
    s = load_settings(env={}, workdir=tmp_path, token_file=token_file(tmp_path, "x" * (MIN_TOKEN_CHARS - 1)))
    with pytest.raises(SettingsError, match=f"is {MIN_TOKEN_CHARS - 1} characters; use at least {MIN_TOKEN_CHARS}"):
        s.read_token()


def test_token_of_the_minimum_length_is_accepted(tmp_path: Path) -> None:
    s = load_settings(env={}, workdir=tmp_path, token_file=token_file(tmp_path, "x" * MIN_TOKEN_CHARS))
    assert s.read_token() == "x" * MIN_TOKEN_CHARS


def test_tls_cert_without_key_is_rejected(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("cert")
    with pytest.raises(SettingsError, match="--tls-cert and --tls-key go together"):
        load_settings(env={}, workdir=tmp_path, tls_cert=cert)
    with pytest.raises(SettingsError, match="--tls-cert and --tls-key go together"):
        load_settings(env={}, workdir=tmp_path, tls_key=cert)


def test_client_ca_needs_a_server_certificate(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("ca")
    with pytest.raises(SettingsError, match="--tls-client-ca"):
        load_settings(env={}, workdir=tmp_path, tls_client_ca=ca)


def test_missing_token_file_is_rejected(tmp_path: Path) -> None:
    missing = tmp_path / "no-token"
    with pytest.raises(SettingsError, match=r"--token-file .*no-token: no such file"):
        load_settings(env={}, workdir=tmp_path, token_file=missing)


def test_token_file_exposed_depends_on_its_mode(tmp_path: Path) -> None:
    path = token_file(tmp_path, mode=0o644)
    s = load_settings(env={}, workdir=tmp_path, token_file=path)
    assert s.token_file_exposed()
    os.chmod(path, 0o600)
    assert not s.token_file_exposed()
    assert not load_settings(env={}, workdir=tmp_path).token_file_exposed()


def test_cache_must_hold_the_largest_artifact(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="max_artifact_bytes <= max_cache_bytes"):
        load_settings(env={}, workdir=tmp_path, max_artifact_bytes=10, max_cache_bytes=5)


# ------------------------------------------------------------------ job limits, sandbox, bounds


def test_job_limit_defaults_come_from_physical_ram(tmp_path: Path) -> None:
    import psutil

    ram = psutil.virtual_memory().total
    s = load_settings(env={}, workdir=tmp_path)
    assert s.job_memory_bytes == int(ram * 0.75)  # a job that sets no limit is no longer unlimited
    assert s.max_job_memory_bytes == int(ram * 0.90)
    assert (s.job_wall_time_s, s.max_job_wall_time_s) == (900.0, 3600.0)
    assert s.sandbox == "auto" and s.cgroup_root is None
    # 0 means "the default", and the default never exceeds a lower ceiling.
    low = load_settings(env={}, workdir=tmp_path, job_memory_bytes=0, max_job_memory_bytes=2**30)
    assert low.job_memory_bytes == 2**30


def test_defaults_over_their_ceilings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="--job-timeout-s 7200 is over the ceiling --max-job-timeout-s 3600"):
        load_settings(env={}, workdir=tmp_path, job_wall_time_s=7200)
    with pytest.raises(SettingsError, match="--job-memory-mb 2048 is over the ceiling --max-job-memory-mb 1024"):
        load_settings(env={}, workdir=tmp_path, job_memory_bytes=2 * 2**30, max_job_memory_bytes=2**30)
    with pytest.raises(SettingsError, match="must be positive"):
        load_settings(env={}, workdir=tmp_path, max_job_wall_time_s=0)


def test_sandbox_mode_is_validated(tmp_path: Path) -> None:
    assert load_settings(env={"EDGEBENCH_AGENT_SANDBOX": "required"}, workdir=tmp_path).sandbox == "required"
    with pytest.raises(SettingsError, match="--sandbox 'strict': must be one of auto, required, off"):
        load_settings(env={"EDGEBENCH_AGENT_SANDBOX": "strict"}, workdir=tmp_path)


def test_cgroup_root_must_be_a_cgroup_v2_folder(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such directory"):
        load_settings(env={}, workdir=tmp_path, cgroup_root=tmp_path / "missing")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(SettingsError, match="not a cgroup v2 folder"):
        load_settings(env={}, workdir=tmp_path, cgroup_root=plain)
    (plain / "cgroup.controllers").write_text("cpu memory pids\n")
    assert load_settings(env={}, workdir=tmp_path, cgroup_root=plain).cgroup_root == plain


def test_secret_paths_name_every_credential_and_the_config_file(tmp_path: Path) -> None:
    cert, key, ca = (tmp_path / n for n in ("cert.pem", "key.pem", "ca.pem"))
    for path in (cert, key, ca):
        path.write_text("pem")
    cfg = config(tmp_path, "port = 0\n")
    s = load_settings(
        cfg, env={}, workdir=tmp_path, token_file=token_file(tmp_path), tls_cert=cert, tls_key=key, tls_client_ca=ca
    )
    assert set(s.secret_paths) == {tmp_path / "token", cert, key, ca, cfg}
    assert load_settings(env={}, workdir=tmp_path).secret_paths == ()


def test_config_file_is_not_a_layered_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"unknown settings \['config_file'\]"):
        load_settings(config(tmp_path, 'config_file = "/elsewhere"\n'), env={}, workdir=tmp_path)
    assert load_settings(env={"EDGEBENCH_AGENT_CONFIG_FILE": "/elsewhere"}, workdir=tmp_path).config_file is None


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_ipv6_loopback_in_both_spellings(tmp_path: Path, host: str) -> None:
    s = load_settings(env={}, workdir=tmp_path, host=host, port=0)
    assert s.host == "::1" and s.is_loopback and not s.authenticated
    assert s.address() == "[::1]:0" and s.address(5) == "[::1]:5"
    assert load_settings(env={}, workdir=tmp_path).address(7) == "127.0.0.1:7"


def test_plaintext_token_is_only_a_non_loopback_token_without_tls(tmp_path: Path) -> None:
    tok = token_file(tmp_path)
    assert load_settings(env={}, workdir=tmp_path, host="0.0.0.0", token_file=tok).plaintext_token
    assert load_settings(env={}, workdir=tmp_path, host="::", token_file=tok).plaintext_token
    assert not load_settings(env={}, workdir=tmp_path, host="::1", token_file=tok).plaintext_token
    assert not load_settings(env={}, workdir=tmp_path, host="0.0.0.0", insecure=True).plaintext_token
    cert = tmp_path / "cert.pem"
    cert.write_text("pem")
    tls = load_settings(env={}, workdir=tmp_path, host="0.0.0.0", token_file=tok, tls_cert=cert, tls_key=cert)
    assert not tls.plaintext_token


def test_stream_bounds_follow_the_worker_pool(tmp_path: Path) -> None:
    s = load_settings(env={}, workdir=tmp_path)
    assert (s.max_workers, s.max_streams_total, s.max_streams_per_client) == (32, 16, 8)
    small = load_settings(env={}, workdir=tmp_path, max_workers=8)
    assert (small.max_streams_total, small.max_streams_per_client) == (4, 4)
    with pytest.raises(SettingsError, match=r"must leave at least 4 of the 32 gRPC worker threads \(--max-workers\)"):
        load_settings(env={}, workdir=tmp_path, max_streams_total=29)
    with pytest.raises(SettingsError, match="--max-workers must be more than 4"):
        load_settings(env={}, workdir=tmp_path, max_workers=4)
    with pytest.raises(SettingsError, match="--max-streams-per-client must not exceed --max-streams-total"):
        load_settings(env={}, workdir=tmp_path, max_streams_total=4, max_streams_per_client=5)
    assert load_settings(env={}, workdir=tmp_path, max_health_watchers=2).max_health_watchers_per_client == 2
    with pytest.raises(SettingsError, match="--max-health-watchers-per-client must not exceed"):
        load_settings(env={}, workdir=tmp_path, max_health_watchers=2, max_health_watchers_per_client=3)


def test_message_and_queue_bounds(tmp_path: Path) -> None:
    s = load_settings(env={}, workdir=tmp_path)
    assert (s.max_request_bytes, s.max_job_bytes, s.max_queued_jobs) == (2 * 2**20, 64 * 2**10, 64)
    assert (s.max_health_watchers, s.max_health_watchers_per_client) == (64, 8)
    with pytest.raises(SettingsError, match="an upload chunk is up to 1 MiB"):
        load_settings(env={}, workdir=tmp_path, max_request_bytes=2**20)
    with pytest.raises(SettingsError, match="--max-job-bytes must not exceed --max-request-bytes"):
        load_settings(env={}, workdir=tmp_path, max_job_bytes=4 * 2**20)
    for name in ("max_queued_jobs", "max_kept_results", "max_job_bytes", "max_health_watchers"):
        with pytest.raises(SettingsError, match=f"--{name.replace('_', '-')} must be at least 1"):
            load_settings(env={}, workdir=tmp_path, **{name: 0})
