"""moto's server with two behaviours fixed to match real AWS KMS.

1. Sign honours MessageType=DIGEST. moto 5.2.5 ignores MessageType and always
   hashes what it is given, so a DIGEST request is signed over SHA-256(digest) and
   can never verify. Real AWS KMS signs the digest as given.
2. RSASSA_PSS_* signatures use a salt as long as the hash. moto uses the longest
   salt that fits; AWS KMS documents the salt length as the hash length (which is
   also what JOSE's PS256 requires).

Otherwise moto's server runs unchanged:

    python3 moto_kms_digest.py -H 127.0.0.1 -p PORT
"""

import contextvars
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from moto.kms.responses import KmsResponse
from moto.kms.utils import ECDSAPrivateKey, RSAPrivateKey
from moto.server import main

_signing_a_digest = contextvars.ContextVar("signing_a_digest", default=False)
_HASHES = {"ECDSA_SHA_256": hashes.SHA256, "ECDSA_SHA_384": hashes.SHA384, "ECDSA_SHA_512": hashes.SHA512}
_RSA = {
    "RSASSA_PSS_SHA_256": hashes.SHA256,
    "RSASSA_PSS_SHA_384": hashes.SHA384,
    "RSASSA_PSS_SHA_512": hashes.SHA512,
    "RSASSA_PKCS1_V1_5_SHA_256": hashes.SHA256,
    "RSASSA_PKCS1_V1_5_SHA_384": hashes.SHA384,
    "RSASSA_PKCS1_V1_5_SHA_512": hashes.SHA512,
}

_moto_response_sign = KmsResponse.sign
_moto_key_sign = ECDSAPrivateKey.sign


def _response_sign(self):
    token = _signing_a_digest.set(self._get_param("MessageType") == "DIGEST")
    try:
        return _moto_response_sign(self)
    finally:
        _signing_a_digest.reset(token)


def _key_sign(self, message, signing_algorithm):
    if _signing_a_digest.get():
        prehashed = utils.Prehashed(_HASHES[signing_algorithm]())
        return self.private_key.sign(message, ec.ECDSA(prehashed))
    return _moto_key_sign(self, message, signing_algorithm)


def _rsa_sign(self, message, signing_algorithm):
    hash_algorithm = _RSA[signing_algorithm]()
    if signing_algorithm.startswith("RSASSA_PSS"):
        pad = padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=padding.PSS.DIGEST_LENGTH)
    else:
        pad = padding.PKCS1v15()
    if _signing_a_digest.get():
        hash_algorithm = utils.Prehashed(hash_algorithm)
    return self.private_key.sign(message, pad, hash_algorithm)


KmsResponse.sign = _response_sign
ECDSAPrivateKey.sign = _key_sign
RSAPrivateKey.sign = _rsa_sign

if __name__ == "__main__":
    sys.exit(main())
