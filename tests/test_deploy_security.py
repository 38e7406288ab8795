"""TLS and SuperNode authentication on loopback: a registered key connects, an unregistered
key is refused, a node without the CA certificate cannot connect. (That an authorised node
trains is shown end to end by test_deploy_local.) No model is loaded; about 20-30 s."""

import os
import sys
import time
from pathlib import Path

import pytest

from fedspine.deploy.certs import make_test_pki
from fedspine.deploy.local import (
    HOST,
    _free_port,
    register_node,
    superlink_argv,
    supernode_argv,
    wait_for_port,
    write_connection,
)
from fedspine.deploy.processes import ProcessGroup

pytestmark = pytest.mark.slow
CONNECT_WAIT_S = 60.0


def wait_exit(group, node, timeout=CONNECT_WAIT_S):
    deadline = time.monotonic() + timeout
    while group.alive(node) and time.monotonic() < deadline:
        time.sleep(0.5)
    return not group.alive(node)


def test_only_registered_keys_over_tls_get_in(tmp_path: Path):
    pki = make_test_pki(tmp_path / "pki", ["good", "stranger"], [HOST, "localhost"])
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(tmp_path / "home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    group = ProcessGroup(env)
    port = _free_port()
    try:
        link = group.start("superlink", superlink_argv(pki, port, tmp_path / "db"), tmp_path / "l")
        wait_for_port(port, link, group)
        write_connection(tmp_path / "home", port, pki.ca_cert)
        register_node(pki.nodes[0].public_key, env, tmp_path / "register.log")
        good, stranger = pki.nodes
        ok = group.start(
            "good",
            supernode_argv(port, good.private_key, "partition-id=0", pki.ca_cert),
            tmp_path / "good.log",
        )
        refused = group.start(
            "stranger",
            supernode_argv(port, stranger.private_key, "partition-id=1", pki.ca_cert),
            tmp_path / "stranger.log",
        )
        untrusting = group.start(
            "no-ca",
            supernode_argv(port, good.private_key, "partition-id=2", None),
            tmp_path / "no-ca.log",
        )
        assert wait_exit(group, refused), "a SuperNode with an unregistered key stayed up"
        assert "Failed to activate SuperNode" in (tmp_path / "stranger.log").read_text()
        assert wait_exit(group, untrusting), "a SuperNode without the CA certificate stayed up"
        assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "no-ca.log").read_text()
        assert group.alive(ok)
        assert "SuperNode ID:" in (tmp_path / "good.log").read_text()
    finally:
        assert group.stop() == []
