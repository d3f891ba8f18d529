"""TLS on both front-ends (EMQX https:// exhook URLs, HTTPS webhooks), with throwaway certificates.

trustme makes a certificate authority at test time; nothing is committed and nothing leaves loopback.
"""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

from .emqx_session import client_info, meta
from .support import Stubs


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("emqx-node-1")
    paths = {"ca": tmp / "ca.pem", "cert": tmp / "server.pem", "key": tmp / "server.key",
             "client_chain": tmp / "client.pem", "client_key": tmp / "client.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client_chain"]))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    return {"ca": ca, "paths": paths}


def authenticate(target: str, creds: grpc.ChannelCredentials, stubs: dict[str, Stubs]) -> Any:
    s = stubs["v3"]
    pb = s.pb2
    with grpc.secure_channel(target, creds) as channel:
        return s.stub(channel).OnClientAuthenticate(pb.ClientAuthenticateRequest(
            clientinfo=client_info(pb, "c", "gooduser"), meta=meta(pb)), timeout=10)


def webhook(port: int, context: ssl.SSLContext) -> tuple[int, Any]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("POST", "/", json.dumps({"client_id": "c", "mountpoint": "", "username": "gooduser",
                                              "password": "p", "peer_addr": "127.0.0.1", "peer_port": 1}),
                     {"vernemq-hook": "auth_on_register", "Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_tls_on_both_front_ends(start_server: Any, rules_dir: Path, pki: dict[str, Any],
                                stubs: dict[str, Stubs], workers: str) -> None:
    p = pki["paths"]
    server = start_server(rules_dir, "--tls-cert", str(p["cert"]), "--tls-key", str(p["key"]), "--workers", workers)
    ca_pem = p["ca"].read_bytes()
    reply = authenticate(server.target, grpc.ssl_channel_credentials(root_certificates=ca_pem), stubs)
    assert reply.bool_result is True
    context = ssl.create_default_context(cafile=str(p["ca"]))
    assert webhook(server.http_port, context) == (200, {"result": "ok"})
    with grpc.insecure_channel(server.target) as plain:  # a plaintext client gets nowhere
        with pytest.raises(grpc.RpcError):
            stubs["v3"].stub(plain).OnClientAuthenticate(stubs["v3"].pb2.ClientAuthenticateRequest(), timeout=3)


def test_mutual_tls_requires_a_client_certificate(start_server: Any, rules_dir: Path, pki: dict[str, Any],
                                                  stubs: dict[str, Stubs]) -> None:
    p = pki["paths"]
    server = start_server(rules_dir, "--tls-cert", str(p["cert"]), "--tls-key", str(p["key"]),
                          "--tls-client-ca", str(p["ca"]))
    ca_pem = p["ca"].read_bytes()
    with_cert = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=p["client_key"].read_bytes(),
                                             certificate_chain=p["client_chain"].read_bytes())
    assert authenticate(server.target, with_cert, stubs).bool_result is True
    with pytest.raises(grpc.RpcError):
        authenticate(server.target, grpc.ssl_channel_credentials(root_certificates=ca_pem), stubs)
    context = ssl.create_default_context(cafile=str(p["ca"]))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        webhook(server.http_port, context)
    context.load_cert_chain(str(p["client_chain"]), str(p["client_key"]))
    assert webhook(server.http_port, context) == (200, {"result": "ok"})
