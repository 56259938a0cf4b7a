"""A Google Cloud KMS emulator (asymmetric signing keys) with Google's OAuth 2.0
token endpoint for service accounts, for kmsgw's `gcp-kms` guest tests. Written
from the public references of Cloud KMS REST v1 and of the JWT-bearer grant
(RFC 7523) that service accounts use. No runnable Cloud KMS emulator exists;
this is not Google Cloud.

At start it makes a service account: `--write-credentials FILE` gets a key file
in Google's format (`type`, `client_email`, `private_key`, `private_key_id`,
`token_uri` pointing here), as the Cloud console hands one out.

Strict where the real service refuses:
- `POST /token`: wrong grant type (400 unsupported_grant_type), a bad signature,
  an unknown issuer, an audience other than `token_uri`, an assertion valid for
  more than an hour or outside its iat/exp window (400 invalid_grant), no
  cloud-platform or cloudkms scope (400 invalid_scope).
- Cloud KMS: no token (401 UNAUTHENTICATED "missing required authentication
  credential"), unknown or expired token (401 UNAUTHENTICATED "invalid
  authentication credentials"), unknown key ring, key or version (404
  NOT_FOUND), an existing or malformed cryptoKeyId (409 ALREADY_EXISTS, 400
  INVALID_ARGUMENT), a version still generating or scheduled for destruction
  (400 FAILED_PRECONDITION), a digest of the wrong kind or size for the key's
  algorithm, data for a key that signs digests or a digest for a key that signs
  data (400 INVALID_ARGUMENT); a public key of a post-quantum (`PQ_SIGN_*`) key
  asked for without `publicKeyFormat=NIST_PQC`, or NIST_PQC for a classic key
  (400 INVALID_ARGUMENT).
New versions stay PENDING_GENERATION for `--generation-ms` (default 150) like
the real service's asynchronous generation. CRC32C fields are not returned.

    python3 gcp_kms_emulator.py --port P --key-ring projects/p/locations/l/keyRings/r \
        --write-credentials sa.json [--token-lifetime SECONDS]
"""

import argparse
import base64
import json
import re
import secrets
import threading
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, padding, rsa, utils

from emulator_base import Handler, Tokens, serve

SCOPES = ("https://www.googleapis.com/auth/cloud-platform", "https://www.googleapis.com/auth/cloudkms")
ID = re.compile(r"^[a-zA-Z0-9_-]{1,63}$")
DIGEST = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}
ML_DSA = {"PQ_SIGN_ML_DSA_44": mldsa.MLDSA44PrivateKey, "PQ_SIGN_ML_DSA_65": mldsa.MLDSA65PrivateKey,
          "PQ_SIGN_ML_DSA_87": mldsa.MLDSA87PrivateKey}


def algorithm_spec(name):
    """(key maker, digest name or None, padding maker or None) of an algorithm."""
    if name == "EC_SIGN_P256_SHA256":
        return (lambda: ec.generate_private_key(ec.SECP256R1()), "sha256", None)
    if name == "EC_SIGN_P384_SHA384":
        return (lambda: ec.generate_private_key(ec.SECP384R1()), "sha384", None)
    if name == "EC_SIGN_ED25519":
        return (ed25519.Ed25519PrivateKey.generate, None, None)
    if name in ML_DSA:
        return (ML_DSA[name].generate, None, None)
    m = re.fullmatch(r"RSA_SIGN_(PKCS1|PSS)_(2048|3072|4096)_SHA256", name or "")
    if m:
        bits = int(m.group(2))
        pad = (lambda: padding.PKCS1v15()) if m.group(1) == "PKCS1" else (
            lambda: padding.PSS(padding.MGF1(hashes.SHA256()), 32))
        return (lambda: rsa.generate_private_key(65537, bits), "sha256", pad)
    return None


def b64(data):
    return base64.b64encode(data).decode()


def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Kms:
    def __init__(self, args, token_uri):
        self.args = args
        self.tokens = Tokens(args.token_lifetime)
        self.account = secrets.token_hex(4) + "@kmsgw-tests.iam.gserviceaccount.com"
        self.signer = rsa.generate_private_key(65537, 2048)
        self.key_id = secrets.token_hex(20)
        self.token_uri = token_uri
        self.key_ring = args.key_ring
        self.keys = {}  # key name -> {"algorithm", "protection", "versions": {n: version}}
        self.lock = threading.Lock()
        self.sign_requests = 0
        # Test instrumentation (not Cloud KMS behaviour): the W3C trace context of
        # each API request, so tests can follow a trace into the backend.
        self.traceparents = []

    def stats(self):
        return {"tokenRequests": self.tokens.requests, "tokensIssued": len(self.tokens.issued), "signRequests": self.sign_requests, "keys": len(self.keys),
                "traceparents": self.traceparents[-100:]}

    def credentials(self):
        pem = self.signer.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
        return {"type": "service_account", "project_id": self.key_ring.split("/")[1],
                "private_key_id": self.key_id, "private_key": pem, "client_email": self.account,
                "client_id": str(secrets.randbits(60)), "token_uri": self.token_uri}


def grpc_error(status_code, status, message):
    return status_code, {"error": {"code": status_code, "message": message, "status": status}}


class GcpHandler(Handler):
    def fail(self, status_code, status, message):
        self.reply(*grpc_error(status_code, status, message))

    def route(self, method, path, query):
        kms = self.server.state
        if method == "POST" and path == "/token":
            return self.token(kms)
        if not path.startswith("/v1/"):
            return self.fail(404, "NOT_FOUND", f"Requested entity was not found: {path}")
        audience, reason = kms.tokens.check(self.headers.get("authorization"))
        if reason == "missing":
            return self.fail(401, "UNAUTHENTICATED", "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential.")
        if reason is not None or audience != "cloudkms":
            return self.fail(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.")
        name, _, verb = path[len("/v1/"):].partition(":")
        if self.headers.get("traceparent"):
            kms.traceparents.append({"path": path, "traceparent": self.headers.get("traceparent")})
        with kms.lock:
            return self.kms(kms, method, name, verb, query)

    def token(self, kms):
        kms.tokens.requests += 1
        form = self.form()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self.reply(400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type: " + form.get("grant_type", "")})
        invalid = lambda why: self.reply(400, {"error": "invalid_grant", "error_description": why})
        try:
            head, claims, sig = form.get("assertion", "").split(".")
            header = json.loads(unb64u(head))
            body = json.loads(unb64u(claims))
        except ValueError:
            return invalid("Invalid JWT: the assertion is not a JWT.")
        if header.get("alg") != "RS256":
            return invalid("Invalid JWT Signature.")
        try:
            kms.signer.public_key().verify(unb64u(sig), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return invalid("Invalid JWT Signature.")
        if body.get("iss") != kms.account:
            return invalid("Invalid JWT: the issuer is not a known service account.")
        if body.get("aud") != kms.token_uri:
            return invalid(f"Invalid JWT: Failed audience check. The right audience is {kms.token_uri}")
        now = time.time()
        iat, exp = body.get("iat", 0), body.get("exp", 0)
        if not (iat - 300 <= now <= exp + 300) or exp - iat > 3600 or exp <= iat:
            return invalid("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.")
        if not any(scope in SCOPES for scope in body.get("scope", "").split()):
            return self.reply(400, {"error": "invalid_scope", "error_description": "Invalid OAuth scope or ID token audience provided."})
        self.reply(200, {"access_token": kms.tokens.issue("cloudkms", "ya29."), "expires_in": kms.tokens.lifetime, "token_type": "Bearer"})

    def kms(self, kms, method, name, verb, query):
        if method == "GET" and name == kms.key_ring and not verb:
            return self.reply(200, {"name": kms.key_ring, "createTime": "2026-01-01T00:00:00Z"})
        if method == "POST" and name == kms.key_ring + "/cryptoKeys" and not verb:
            return self.create(kms, query.get("cryptoKeyId", ""), self.json_body() or {})
        m = re.fullmatch(re.escape(kms.key_ring) + r"/cryptoKeys/([^/]+)/cryptoKeyVersions/(\d+)(/publicKey)?", name)
        if not m:
            return self.fail(404, "NOT_FOUND", f"{name} not found.")
        key = kms.keys.get(m.group(1))
        version = key and key["versions"].get(int(m.group(2)))
        if not version:
            return self.fail(404, "NOT_FOUND", f"{name.removesuffix('/publicKey')} not found.")
        version_name = f"{kms.key_ring}/cryptoKeys/{m.group(1)}/cryptoKeyVersions/{m.group(2)}"
        state = self.state(version)
        if method == "GET" and m.group(3) and not verb:
            if state != "ENABLED":
                return self.precondition(version_name, state)
            return self.public_key(key, version, version_name, query.get("publicKeyFormat"))
        if method == "POST" and verb == "asymmetricSign" and not m.group(3):
            if state != "ENABLED":
                return self.precondition(version_name, state)
            return self.sign(kms, key, version, version_name, self.json_body() or {})
        if method == "POST" and verb == "destroy" and not m.group(3):
            if state not in ("ENABLED", "DISABLED"):
                return self.precondition(version_name, state)
            version["state"] = "DESTROY_SCHEDULED"
            return self.reply(200, self.describe(version_name, key, version))
        self.fail(400, "INVALID_ARGUMENT", f"Unsupported request {method} {name}:{verb}")

    def public_key(self, key, version, name, key_format):
        answer = {"algorithm": key["algorithm"], "name": name, "protectionLevel": key["protection"]}
        public = version["key"].public_key()
        if key["algorithm"] in ML_DSA:
            if key_format != "NIST_PQC":
                return self.fail(400, "INVALID_ARGUMENT", f"The public key format {key_format or 'PUBLIC_KEY_FORMAT_UNSPECIFIED'} is not supported for algorithm {key['algorithm']}; use NIST_PQC.")
            answer["publicKey"] = {"data": b64(public.public_bytes_raw())}
            answer["publicKeyFormat"] = "NIST_PQC"
            return self.reply(200, answer)
        if key_format not in (None, "PEM"):
            return self.fail(400, "INVALID_ARGUMENT", f"The public key format {key_format} is not supported for algorithm {key['algorithm']}.")
        answer["pem"] = public.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        return self.reply(200, answer)

    @staticmethod
    def state(version):
        if version["state"] == "PENDING_GENERATION" and time.time() >= version["ready"]:
            version["state"] = "ENABLED"
        return version["state"]

    def precondition(self, name, state):
        self.fail(400, "FAILED_PRECONDITION", f"The request cannot be fulfilled. Resource {name} has value {state} in field crypto_key_version.state.")

    @staticmethod
    def describe(name, key, version):
        return {"name": name, "state": version["state"], "protectionLevel": key["protection"],
                "algorithm": key["algorithm"], "createTime": version["created"]}

    def create(self, kms, key_id, body):
        if not ID.fullmatch(key_id):
            return self.fail(400, "INVALID_ARGUMENT", f"Invalid cryptoKeyId: '{key_id}'. Must match [a-zA-Z0-9_-]{{1,63}}.")
        if key_id in kms.keys:
            return self.fail(409, "ALREADY_EXISTS", f"CryptoKey {kms.key_ring}/cryptoKeys/{key_id} already exists.")
        template = body.get("versionTemplate") or {}
        spec = algorithm_spec(template.get("algorithm"))
        if body.get("purpose") != "ASYMMETRIC_SIGN" or spec is None:
            return self.fail(400, "INVALID_ARGUMENT", "The request's purpose and versionTemplate.algorithm do not name an asymmetric signing algorithm.")
        protection = template.get("protectionLevel", "SOFTWARE")
        if protection not in ("SOFTWARE", "HSM"):
            return self.fail(400, "INVALID_ARGUMENT", f"Invalid protectionLevel: {protection}")
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        version = {"key": spec[0](), "state": "PENDING_GENERATION", "created": created,
                   "ready": time.time() + kms.args.generation_ms / 1000}
        kms.keys[key_id] = {"algorithm": template["algorithm"], "protection": protection, "versions": {1: version}}
        name = f"{kms.key_ring}/cryptoKeys/{key_id}"
        self.reply(200, {"name": name, "purpose": "ASYMMETRIC_SIGN", "createTime": created,
                         "versionTemplate": {"algorithm": template["algorithm"], "protectionLevel": protection}})

    def sign(self, kms, key, version, name, body):
        kms.sign_requests += 1
        make, digest_name, pad = algorithm_spec(key["algorithm"])
        private = version["key"]
        if digest_name is None:
            if "data" not in body or "digest" in body:
                return self.fail(400, "INVALID_ARGUMENT", f"{key['algorithm']} keys sign data, not a digest.")
            signature = private.sign(base64.b64decode(body["data"]))
        else:
            digest = (body.get("digest") or {})
            if "data" in body or list(digest) != [digest_name]:
                return self.fail(400, "INVALID_ARGUMENT", f"The digest type does not match the algorithm {key['algorithm']}; expected digest.{digest_name}.")
            value = base64.b64decode(digest[digest_name])
            hash_alg = DIGEST[digest_name]
            if len(value) != hash_alg.digest_size:
                return self.fail(400, "INVALID_ARGUMENT", f"digest.{digest_name} must be {hash_alg.digest_size} bytes.")
            if pad is None:
                signature = private.sign(value, ec.ECDSA(utils.Prehashed(hash_alg)))
            else:
                signature = private.sign(value, pad(), utils.Prehashed(hash_alg))
        self.reply(200, {"signature": b64(signature), "name": name, "protectionLevel": key["protection"]})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key-ring", required=True)
    parser.add_argument("--write-credentials", required=True)
    parser.add_argument("--token-lifetime", type=int, default=3599)
    parser.add_argument("--generation-ms", type=int, default=150)
    args = parser.parse_args()
    kms = Kms(args, f"http://127.0.0.1:{args.port}/token")
    with open(args.write_credentials, "w") as out:
        json.dump(kms.credentials(), out)
    serve(GcpHandler, args.port, kms)


if __name__ == "__main__":
    main()
