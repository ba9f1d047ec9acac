"""TLS with dcmtk, and peers that connect and say nothing."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NodeFactory
from nodeharness import Node, echoscu, storescu, wait_for
from scans import series_files

pytestmark = pytest.mark.slow


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made here."""
    d = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Test Hospital CA",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
    )
    for name, cn in (("server", "127.0.0.1"), ("client", "GAMMA_CAM")):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        ext = d / f"{name}.ext"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1\n" if name == "server" else "basicConstraints=CA:FALSE\n"
        )
        openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.crt"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(d / f"{name}.crt"),
        )
    return d


def tls_node(node_factory: NodeFactory, pki: Path) -> Node:
    return node_factory(
        {
            "tls": {
                "enabled": True,
                "certificate": pki / "server.crt",
                "private_key": pki / "server.key",
                "ca_certificate": pki / "ca.crt",
                "require_client_certificate": True,
            },
            "timeouts": {"connection_idle": 3.0},
        }
    )


def tls_args(pki: Path) -> tuple[str, ...]:
    return ("+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt"))


@pytest.fixture
def silent_peers() -> Iterator[list[socket.socket]]:
    peers: list[socket.socket] = []
    yield peers
    for peer in peers:
        peer.close()


def connect_and_say_nothing(node: Node, peers: list[socket.socket], count: int) -> None:
    for _ in range(count):
        peers.append(socket.create_connection(("127.0.0.1", node.port)))


def test_store_over_tls_with_client_certificates(
    node_factory: NodeFactory, pki: Path, tmp_path: Path
) -> None:
    node = tls_node(node_factory, pki)
    node.start()
    files = series_files(tmp_path / "send", 2)
    result = storescu(node, *files, extra=tls_args(pki))
    assert result.returncode == 0, result.stderr
    assert len(node.audit("instances")) == 2
    [assoc] = node.audit("associations")
    assert assoc["tls"] is True
    assert (assoc["state"], assoc["instances"]) == ("released", 2)


def test_plain_tcp_peer_on_a_tls_port_is_refused_and_audited(
    node_factory: NodeFactory, pki: Path
) -> None:
    node = tls_node(node_factory, pki)
    node.start()
    assert echoscu(node).returncode != 0
    row = wait_for(lambda: node.audit("associations", "--state", "rejected"), 10)[0]
    assert "TLS handshake failed" in row["reason"]
    assert row["tls"] is True


def test_silent_tls_clients_do_not_block_other_associations(
    node_factory: NodeFactory, pki: Path, tmp_path: Path, silent_peers: list[socket.socket]
) -> None:
    node = tls_node(node_factory, pki)
    node.start()
    # More silent clients than receiver processes: each would stall a pynetdicom 3.0 server.
    connect_and_say_nothing(node, silent_peers, 4)
    files = series_files(tmp_path / "send", 1)
    timeouts = ("-to", "10", "-ta", "10")
    # Blocked behind the silent clients, this would hang past the 30 s limit.
    result = storescu(node, files[0], extra=(*timeouts, *tls_args(pki)), timeout=30)
    assert result.returncode == 0, result.stderr
    assert len(node.audit("instances")) == 1
    # The silent clients are dropped once the idle timeout passes, and audited.
    rows = wait_for(
        lambda: [
            r
            for r in node.audit("associations", "--state", "rejected")
            if "TLS handshake failed" in (r["reason"] or "")
        ][3:],
        20,
    )
    assert rows


def test_silent_plain_clients_do_not_block_other_associations(
    node_factory: NodeFactory, tmp_path: Path, silent_peers: list[socket.socket]
) -> None:
    node = node_factory({"timeouts": {"acse": 3.0}})
    node.start()
    connect_and_say_nothing(node, silent_peers, 6)
    files = series_files(tmp_path / "send", 1)
    result = storescu(node, files[0], extra=("-to", "10", "-ta", "10"))
    assert result.returncode == 0, result.stderr
    assert len(node.audit("instances")) == 1
