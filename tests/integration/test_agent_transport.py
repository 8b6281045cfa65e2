"""Transport security and the agent's command line: TLS, mutual TLS, reflection, refusals, shutdown."""

from __future__ import annotations

import datetime
import ipaddress
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coordinator.dispatch.client import AgentClient, Credentials
from protos.edgebench.agent.v1 import agent_pb2 as pb


def _cert(name: str, issuer_key, issuer_name, key, *, ca: bool, server: bool = False):  # type: ignore[no-untyped-def]
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("edgebench test CA", ca_key, None, ca_key, ca=True)
    out = {"ca": d / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(name, ca_key, ca.subject, key, ca=False, server=server)
        out[f"{name}_cert"] = d / f"{name}.pem"
        out[f"{name}_key"] = d / f"{name}.key"
        out[f"{name}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return out


def test_tls_with_token(agent_factory, pki: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("--tls-cert", str(pki["server_cert"]), "--tls-key", str(pki["server_key"]))
    ca = pki["ca"].read_bytes()
    with AgentClient(agent.address, Credentials(token=agent.token, tls_ca=ca)) as client:
        assert client.device_info().device_id
    with AgentClient(agent.address, Credentials(tls_ca=ca)) as client, pytest.raises(grpc.RpcError) as err:
        client.device_info()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A plaintext client cannot talk to a TLS agent at all.
    with (
        AgentClient(agent.address, Credentials(token=agent.token), timeout_s=3) as client,
        pytest.raises(grpc.RpcError) as err,
    ):
        client.device_info()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(agent_factory, pki: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory(
        "--tls-cert",
        str(pki["server_cert"]),
        "--tls-key",
        str(pki["server_key"]),
        "--tls-client-ca",
        str(pki["ca"]),
    )
    ca = pki["ca"].read_bytes()
    with_cert = Credentials(
        token=agent.token,
        tls_ca=ca,
        tls_cert=pki["client_cert"].read_bytes(),
        tls_key=pki["client_key"].read_bytes(),
    )
    with AgentClient(agent.address, with_cert) as client:
        assert client.device_info().device_id
    with (
        AgentClient(agent.address, Credentials(token=agent.token, tls_ca=ca), timeout_s=3) as client,
        pytest.raises(grpc.RpcError) as err,
    ):
        client.device_info()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # handshake refused


def test_reflection_only_when_asked(agent_factory) -> None:  # type: ignore[no-untyped-def]
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    def list_services(address: str, token: str) -> list[str]:
        with grpc.insecure_channel(address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            responses = stub.ServerReflectionInfo(
                iter([request]), metadata=(("authorization", f"Bearer {token}"),), timeout=5
            )
            return [s.name for r in responses for s in r.list_services_response.service]

    plain = agent_factory()
    with pytest.raises(grpc.RpcError) as err:
        list_services(plain.address, plain.token)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    reflective = agent_factory("--reflection")
    assert "edgebench.agent.v1.AgentService" in list_services(reflective.address, reflective.token)
    with pytest.raises(grpc.RpcError) as err:  # reflection is not public either
        list_services(reflective.address, "wrong-token-but-long-enough")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _agent_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_non_loopback_without_auth_is_refused(tmp_path: Path) -> None:
    done = _agent_cli("serve", "--host", "0.0.0.0", "--port", "0", "--workdir", str(tmp_path))
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in done.stderr
    assert "--token-file" in done.stderr and "--insecure" in done.stderr
    assert "Traceback" not in done.stderr


def test_insecure_flag_allows_it_loudly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--workdir",
            str(tmp_path),
            "--insecure",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("edgebench-agent listening on 0.0.0.0:")
        port = int(line.split()[3].rsplit(":", 1)[1])
        with AgentClient(f"127.0.0.1:{port}") as client:  # no token needed: that is what --insecure means
            assert client.device_info().device_id
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert "WARNING: no authentication" in err and "--insecure" in err
    assert proc.returncode == 0


def test_short_token_and_missing_file_are_refused(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc")
    done = _agent_cli("serve", "--port", "0", "--workdir", str(tmp_path), "--token-file", str(short))
    assert done.returncode == 2 and "use at least 16" in done.stderr
    done = _agent_cli("serve", "--port", "0", "--workdir", str(tmp_path), "--token-file", str(tmp_path / "nope"))
    assert done.returncode == 2 and "no such file" in done.stderr


def test_port_in_use_is_a_clear_error(agent_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory()
    done = _agent_cli("serve", "--port", str(agent.port), "--workdir", str(tmp_path))
    assert done.returncode == 3 and "could not bind" in done.stderr


def test_sigterm_during_a_job_shuts_down_gracefully(agent_factory, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import make_job, wait_for

    agent = agent_factory()
    with agent.client() as client:
        sha = client.upload(models["null"]).sha256
        job = make_job(sha, fmt=pb.MODEL_FORMAT_NULL, runtime="null", min_ms=60_000, max_s=120)
        stream = client.run(job)
        next(stream)
        wait_for(lambda: client.get_result(job.job_id).state == pb.JOB_STATE_RUNNING)
        started = time.monotonic()
        agent.process.send_signal(signal.SIGTERM)
        events = list(stream)
    assert agent.process.wait(20) == 0
    assert time.monotonic() - started < 15
    assert events[-1].result.status == pb.BENCHMARK_STATUS_CANCELLED  # the stream got its one result


def test_info_command_json() -> None:
    done = _agent_cli("info", "--format", "json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["cpu_logical_cores"] >= 1
    assert {r["name"] for r in info["runtimes"]} >= {"onnxruntime", "null", "tensorrt"}
    table = _agent_cli("info")
    assert "onnxruntime" in table.stdout and "runtimes:" in table.stdout
