"""A token issuer for a real `docker-registry` (distribution 2.8) configured with
`auth: token`: the flow Docker Hub, GHCR and Harbor use. A client refused with
`WWW-Authenticate: Bearer realm=…,service=…,scope=…` asks `GET /token?service=…
&scope=…` here with HTTP Basic credentials and gets `{"token": JWT}`; the
registry checks the JWT (ES256, the signing certificate in `x5c`, rooted in its
`rootcertbundle`) and the actions it grants. This is the test's own issuer, not
an emulation of any registry: the registry is the real one.

Refuses a missing or wrong password (401), a service other than its own (400).
Every token it issues is appended to --issued, so a test can look for them where
they must not be.

    python3 registry_token_issuer.py --port-file F --cert-out C --issued I \
        --service S --issuer ISS --user NAME --password PASSWORD
"""

import argparse
import base64
import datetime
import json
import os
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--port-file", "--cert-out", "--issued", "--service", "--issuer", "--user", "--password"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kmsgw test token issuer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with open(args.cert_out, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    expected = "Basic " + base64.b64encode(f"{args.user}:{args.password}".encode()).decode()
    lock = threading.Lock()

    def issue(scopes):
        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) == 3 and parts[0] == "repository":
                access.append({"type": "repository", "name": parts[1], "actions": parts[2].split(",")})
        issued_at = int(time.time())
        header = {"alg": "ES256", "typ": "JWT", "x5c": [x5c]}
        claims = {
            "iss": args.issuer,
            "sub": args.user,
            "aud": args.service,
            "exp": issued_at + 300,
            "nbf": issued_at - 10,
            "iat": issued_at,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        token = signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        with lock, open(args.issued, "a") as f:
            f.write(token + "\n")
        return token

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path != "/token":
                return self.answer(404, {"error": "not found"})
            if self.headers.get("Authorization") != expected:
                return self.answer(401, {"details": "incorrect username or password"})
            if query.get("service") != [args.service]:
                return self.answer(400, {"details": "unknown service"})
            self.answer(200, {"token": issue(query.get("scope", [])), "expires_in": 300})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(args.port_file + ".partial", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(args.port_file + ".partial", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
