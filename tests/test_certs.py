"""The test PKI: a CA that signs the server certificate for the dialled hosts, and node key
pairs in the OpenSSH EC format that `flwr supernode register` and the SuperNode read."""

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from typer.testing import CliRunner

from fedspine.cli import app


def test_make_certs_writes_a_ca_signed_server_cert_and_node_keys(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "make-certs",
            "--out",
            str(tmp_path),
            "--host",
            "10.0.0.5",
            "--host",
            "hub.lan",
            "--nodes",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert names.get_values_for_type(x509.DNSName) == ["hub.lan"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for i in range(2):
        private = load_ssh_private_key((tmp_path / f"node-{i}").read_bytes(), None)
        public = load_ssh_public_key((tmp_path / f"node-{i}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.public_key().public_numbers() == public.public_numbers()
        assert (tmp_path / f"node-{i}").stat().st_mode & 0o077 == 0  # private: owner only
    assert not (tmp_path / "node-2").exists()
