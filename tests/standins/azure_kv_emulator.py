"""An Azure Key Vault emulator (keys only) with its Azure AD token endpoint, for
kmsgw's `azure-kv` guest tests. Written from the public REST references of Key
Vault (keys, api-version 7.x) and of the Microsoft identity platform's client
credentials flow. No runnable Key Vault emulator exists; this is not Azure.

Strict where the real service refuses:
- token endpoint `POST /{tenant}/oauth2/v2.0/token`: unknown tenant (400
  invalid_request, AADSTS90002), unknown client (400 unauthorized_client,
  AADSTS700016), wrong secret (401 invalid_client, AADSTS7000215), a scope
  that is not `<resource>/.default` (400 invalid_scope, AADSTS70011). A token's
  audience is the scope's resource.
- Key Vault: `api-version` missing or unknown (400 BadParameter); no bearer
  token (401 AKV10000 with a WWW-Authenticate challenge), an unknown or
  expired one (401 Unauthorized), one for another audience (401 AKV10022);
  unknown key (404 KeyNotFound); a name in the deleted-but-recoverable state
  (409 Conflict); a digest whose length does not fit the algorithm, or an
  algorithm that does not fit the key (400 BadParameter).
Signatures are made with the `cryptography` package: ECDSA as r||s, RSA PKCS#1
v1.5 and PSS (salt as long as the hash) over the given digest.

    python3 azure_kv_emulator.py --port P --tenant T --client-id C \
        --client-secret S [--token-lifetime SECONDS]
"""

import argparse
import base64
import secrets
import threading
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from emulator_base import Handler, Tokens, serve

RESOURCE = "https://vault.azure.net"
API_VERSIONS = {"7.2", "7.3", "7.4", "7.5", "7.6"}
CURVES = {"P-256": (ec.SECP256R1, 32), "P-384": (ec.SECP384R1, 48), "P-521": (ec.SECP521R1, 66)}
EC_ALGS = {"ES256": ("P-256", hashes.SHA256()), "ES384": ("P-384", hashes.SHA384()), "ES512": ("P-521", hashes.SHA512())}
RSA_ALGS = {"RS256": hashes.SHA256(), "PS256": hashes.SHA256()}


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def as_int(text):
    return int.from_bytes(unb64u(text), "big")


def int_bytes(value, size=None):
    size = size or (value.bit_length() + 7) // 8
    return value.to_bytes(size, "big")


class Vault:
    def __init__(self, args):
        self.args = args
        self.tokens = Tokens(args.token_lifetime)
        self.keys = {}  # name -> list of (version, private key, kty, crv)
        self.deleted = set()
        self.lock = threading.Lock()
        self.sign_requests = 0

    def stats(self):
        return {"tokenRequests": self.tokens.requests, "tokensIssued": len(self.tokens.issued), "signRequests": self.sign_requests, "keys": len(self.keys)}

    def bundle(self, base, name, entry):
        version, key, kty, crv = entry
        jwk = {"kid": f"{base}/keys/{name}/{version}", "kty": kty, "key_ops": ["sign", "verify"]}
        public = key.public_key()
        if kty == "EC":
            size = CURVES[crv][1]
            numbers = public.public_numbers()
            jwk.update(crv=crv, x=b64u(int_bytes(numbers.x, size)), y=b64u(int_bytes(numbers.y, size)))
        else:
            numbers = public.public_numbers()
            jwk.update(n=b64u(int_bytes(numbers.n)), e=b64u(int_bytes(numbers.e)))
        now = int(time.time())
        return {"key": jwk, "attributes": {"enabled": True, "created": now, "updated": now,
                                           "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90}}


class AzureHandler(Handler):
    def error(self, status, code, message, headers=None):
        self.reply(status, {"error": {"code": code, "message": message}}, headers)

    def route(self, method, path, query):
        vault = self.server.state
        parts = [p for p in path.split("/") if p]
        if method == "POST" and len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            return self.token(vault, parts[0])
        if not parts or parts[0] != "keys":
            return self.error(404, "NotFound", f"The requested resource {path} was not found.")
        version = query.get("api-version")
        if version is None:
            return self.error(400, "BadParameter", "The 'api-version' query parameter is missing.")
        if version not in API_VERSIONS:
            return self.error(400, "BadParameter",
                              f"The specified version ({version}) is not recognized. Consider using the latest supported version (7.6).")
        audience, reason = vault.tokens.check(self.headers.get("authorization"))
        if reason == "missing":
            challenge = f'Bearer authorization="https://login.microsoftonline.com/{vault.args.tenant}", resource="{RESOURCE}"'
            return self.error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.",
                              {"WWW-Authenticate": challenge})
        if reason == "expired":
            return self.error(401, "Unauthorized", "[TokenExpired] Error validating token: 'S2S12086'.")
        if reason == "unknown":
            return self.error(401, "Unauthorized", "[BearerReadAccessTokenFailed] Error validating token: 'S2S12005'.")
        if audience != RESOURCE:
            return self.error(401, "Unauthorized", f"AKV10022: Invalid audience. Expected {RESOURCE}, found: {audience}.")
        base = f"http://{self.headers.get('host')}"
        with vault.lock:
            return self.keys(vault, base, method, parts[1:], query)

    def token(self, vault, tenant):
        vault.tokens.requests += 1
        form = self.form()
        if tenant != vault.args.tenant:
            return self.reply(400, {"error": "invalid_request",
                                    "error_description": f"AADSTS90002: Tenant '{tenant}' not found."})
        if form.get("grant_type") != "client_credentials":
            return self.reply(400, {"error": "unsupported_grant_type",
                                    "error_description": "AADSTS70003: The app requested an unsupported grant type."})
        if form.get("client_id") != vault.args.client_id:
            return self.reply(400, {"error": "unauthorized_client",
                                    "error_description": f"AADSTS700016: Application with identifier '{form.get('client_id')}' was not found in the directory."})
        if not secrets.compare_digest(form.get("client_secret", ""), vault.args.client_secret):
            return self.reply(401, {"error": "invalid_client",
                                    "error_description": "AADSTS7000215: Invalid client secret provided."})
        scope = form.get("scope", "")
        if not scope.endswith("/.default"):
            return self.reply(400, {"error": "invalid_scope",
                                    "error_description": "AADSTS70011: The provided value for the input parameter 'scope' is not valid."})
        audience = scope[: -len("/.default")]
        life = vault.tokens.lifetime
        self.reply(200, {"token_type": "Bearer", "expires_in": life, "ext_expires_in": life,
                         "access_token": vault.tokens.issue(audience, "eyJ0")})

    def keys(self, vault, base, method, rest, query):
        if method == "GET" and not rest:
            listed = [{"kid": f"{base}/keys/{name}", "attributes": {"enabled": True}} for name in sorted(vault.keys)]
            limit = int(query.get("maxresults", "25"))
            return self.reply(200, {"value": listed[:limit], "nextLink": None})
        name = rest[0]
        if not name.replace("-", "").isalnum() or len(name) > 127:
            return self.error(400, "BadParameter", f"The request URI contains an invalid name: {name}")
        if method == "POST" and rest[1:] == ["create"]:
            return self.create(vault, base, name, self.json_body() or {})
        if method == "PUT" and len(rest) == 1:
            return self.import_key(vault, base, name, self.json_body() or {})
        if method == "DELETE" and len(rest) == 1:
            if name not in vault.keys:
                return self.not_found(name)
            entry = vault.keys.pop(name)[-1]
            vault.deleted.add(name)
            bundle = vault.bundle(base, name, entry)
            bundle.update(recoveryId=f"{base}/deletedkeys/{name}", deletedDate=int(time.time()),
                          scheduledPurgeDate=int(time.time()) + 90 * 86400)
            return self.reply(200, bundle)
        versions = vault.keys.get(name)
        if not versions:
            return self.not_found(name)
        entry = versions[-1] if len(rest) == 1 else next((v for v in versions if v[0] == rest[1]), None)
        if entry is None:
            return self.not_found(f"{name}/{rest[1]}")
        if method == "GET" and len(rest) in (1, 2):
            return self.reply(200, vault.bundle(base, name, entry))
        if method == "POST" and len(rest) == 3 and rest[2] == "sign":
            return self.sign(vault, base, name, entry, self.json_body() or {})
        return self.error(405, "MethodNotAllowed", f"{method} is not allowed here.")

    def not_found(self, name):
        self.error(404, "KeyNotFound", f"A key with (name/id) {name} was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command.")

    def conflict(self, vault, name):
        if name in vault.deleted:
            self.error(409, "Conflict", f"Key {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the key can be recovered or purged.")
            return True
        return False

    def store(self, vault, base, name, key, kty, crv):
        entry = (secrets.token_hex(16), key, kty, crv)
        vault.keys.setdefault(name, []).append(entry)
        self.reply(200, vault.bundle(base, name, entry))

    def create(self, vault, base, name, body):
        if self.conflict(vault, name):
            return
        kty = body.get("kty")
        if kty in ("EC", "EC-HSM"):
            crv = body.get("crv", "P-256")
            if crv not in CURVES:
                return self.error(400, "BadParameter", f"Invalid curve name: {crv}")
            return self.store(vault, base, name, ec.generate_private_key(CURVES[crv][0]()), "EC", crv)
        if kty in ("RSA", "RSA-HSM"):
            size = body.get("key_size", 2048)
            if size not in (2048, 3072, 4096):
                return self.error(400, "BadParameter", f"Invalid key size: {size}")
            return self.store(vault, base, name, rsa.generate_private_key(65537, size), "RSA", None)
        self.error(400, "BadParameter", f"Invalid key type: {kty}")

    def import_key(self, vault, base, name, body):
        if self.conflict(vault, name):
            return
        jwk = body.get("key") or {}
        try:
            if jwk.get("kty") == "EC":
                curve, size = CURVES[jwk["crv"]]
                public = ec.EllipticCurvePublicNumbers(as_int(jwk["x"]), as_int(jwk["y"]), curve())
                key = ec.EllipticCurvePrivateNumbers(as_int(jwk["d"]), public).private_key()
                return self.store(vault, base, name, key, "EC", jwk["crv"])
            if jwk.get("kty") == "RSA":
                public = rsa.RSAPublicNumbers(as_int(jwk["e"]), as_int(jwk["n"]))
                numbers = rsa.RSAPrivateNumbers(as_int(jwk["p"]), as_int(jwk["q"]), as_int(jwk["d"]),
                                                as_int(jwk["dp"]), as_int(jwk["dq"]), as_int(jwk["qi"]), public)
                return self.store(vault, base, name, numbers.private_key(), "RSA", None)
        except (KeyError, ValueError) as e:
            return self.error(400, "BadParameter", f"The key is not valid: {e}")
        self.error(400, "BadParameter", f"Invalid key type: {jwk.get('kty')}")

    def sign(self, vault, base, name, entry, body):
        vault.sign_requests += 1
        version, key, kty, crv = entry
        alg, value = body.get("alg"), body.get("value")
        if value is None:
            return self.error(400, "BadParameter", "Property value is required.")
        digest = unb64u(value)
        if alg in EC_ALGS and kty == "EC":
            want_crv, hash_alg = EC_ALGS[alg]
            if want_crv != crv:
                return self.error(400, "BadParameter", f"Key and signing algorithm are incompatible: {alg} on {crv}.")
            if len(digest) != hash_alg.digest_size:
                return self.error(400, "BadParameter", f"Invalid length of digest for {alg}: {len(digest)}.")
            r, s = utils.decode_dss_signature(key.sign(digest, ec.ECDSA(utils.Prehashed(hash_alg))))
            size = CURVES[crv][1]
            signature = int_bytes(r, size) + int_bytes(s, size)
        elif alg in RSA_ALGS and kty == "RSA":
            hash_alg = RSA_ALGS[alg]
            if len(digest) != hash_alg.digest_size:
                return self.error(400, "BadParameter", f"Invalid length of digest for {alg}: {len(digest)}.")
            pad = padding.PKCS1v15() if alg == "RS256" else padding.PSS(padding.MGF1(hash_alg), hash_alg.digest_size)
            signature = key.sign(digest, pad, utils.Prehashed(hash_alg))
        else:
            return self.error(400, "BadParameter", f"Key and signing algorithm are incompatible: {alg} on {kty}.")
        self.reply(200, {"kid": f"{base}/keys/{name}/{version}", "value": b64u(signature)})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--token-lifetime", type=int, default=3599)
    args = parser.parse_args()
    serve(AzureHandler, args.port, Vault(args))


if __name__ == "__main__":
    main()
