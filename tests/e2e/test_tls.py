"""An ``https://`` upstream with a certificate generated in the test: trusted through the CA-bundle setting,
through ``SSL_CERT_FILE``, not trusted (a clear error, not "cooling down"), or not checked (lab setting,
loud warning); any other scheme is a start-up error naming the setting."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from tests.conftest import FAKE_ENV, FAKE_MODELS
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import ROOT, GatewayProcess

ADMIN = {"Authorization": "Bearer admin"}
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    authority = trustme.CA()
    pem = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(pem))
    return authority, pem


@pytest.fixture(scope="module")
def https_upstream(ca: tuple[trustme.CA, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    authority, _ = ca
    folder = tmp_path_factory.mktemp("server-cert")
    cert = authority.issue_cert("localhost")
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    chain = folder / "chain.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    control = ssl.create_default_context()
    authority.configure_trust(control)
    with UpstreamProcess(models=FAKE_MODELS, tls=(str(chain), str(folder / "key.pem")), control_ssl=control) as up:
        assert up.url.startswith("https://localhost:")
        yield up


def gateway(up: UpstreamProcess, registry_file: Path, tmp_path: Path, **env: str) -> GatewayProcess:
    return GatewayProcess(upstream=up.url, registry=registry_file, log_path=tmp_path / "g.log",
                          env={**FAKE_ENV, "GATEWAY_ADMIN_API_KEY": "admin", **env})


def test_ca_bundle_setting(https_upstream: UpstreamProcess, ca: tuple[trustme.CA, Path], registry_file: Path,
                           tmp_path: Path) -> None:
    with gateway(https_upstream, registry_file, tmp_path, GATEWAY_UPSTREAM_CA_BUNDLE=str(ca[1])) as gw:
        gw.wait_ready()
        r = httpx.post(f"{gw.base_url}/chat/completions", json=BODY, timeout=10)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        streamed = httpx.post(f"{gw.base_url}/chat/completions", json={**BODY, "stream": True}, timeout=10)
        assert streamed.text.rstrip().endswith("data: [DONE]")


def test_ssl_cert_file_is_honoured(https_upstream: UpstreamProcess, ca: tuple[trustme.CA, Path],
                                   registry_file: Path, tmp_path: Path) -> None:
    with gateway(https_upstream, registry_file, tmp_path, SSL_CERT_FILE=str(ca[1])) as gw:
        gw.wait_ready()
        assert httpx.post(f"{gw.base_url}/chat/completions", json=BODY, timeout=10).status_code == 200


def test_untrusted_certificate_is_a_clear_error(https_upstream: UpstreamProcess, registry_file: Path,
                                                 tmp_path: Path) -> None:
    with gateway(https_upstream, registry_file, tmp_path, GATEWAY_BREAKER_FAILURES="2") as gw:
        ready = httpx.get(f"{gw.url}/readyz", headers=ADMIN, timeout=5).json()
        assert ready["status"] == "not_ready" and "CERTIFICATE_VERIFY_FAILED" in ready["upstream"]["error"]
        for _ in range(4):  # the breaker opens on the way: its message keeps the reason
            r = httpx.post(f"{gw.base_url}/chat/completions", json=BODY, timeout=10)
            assert r.status_code == 503 and "CERTIFICATE_VERIFY_FAILED" in r.json()["error"]["message"], r.text


def test_verification_off_for_labs_warns(https_upstream: UpstreamProcess, registry_file: Path,
                                         tmp_path: Path) -> None:
    with gateway(https_upstream, registry_file, tmp_path, GATEWAY_UPSTREAM_TLS_VERIFY="false") as gw:
        gw.wait_ready()
        assert httpx.post(f"{gw.base_url}/chat/completions", json=BODY, timeout=10).status_code == 200
    assert "GATEWAY_UPSTREAM_TLS_VERIFY=false: the upstream's TLS certificate is NOT checked" in \
        (tmp_path / "g.log").read_text()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:21", "unix:///tmp/sock", "127.0.0.1:5273"])
def test_other_schemes_are_a_start_up_error(url: str) -> None:
    run = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--upstream", url], cwd=ROOT,
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "GATEWAY_ENV_FILE": "/nonexistent"})
    assert run.returncode == 2
    assert "GATEWAY_UPSTREAM_URL" in run.stderr and "http:// or https://" in run.stderr
