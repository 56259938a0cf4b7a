"""moto's server with one behaviour fixed: KMS Sign honours MessageType=DIGEST.

moto 5.2.5 ignores MessageType and always hashes what it is given, so a DIGEST
request is signed over SHA-256(digest) and can never verify. Real AWS KMS signs the
digest as given. This launcher patches exactly that and otherwise runs moto's
server unchanged:

    python3 moto_kms_digest.py -H 127.0.0.1 -p PORT
"""

import contextvars
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from moto.kms.responses import KmsResponse
from moto.kms.utils import ECDSAPrivateKey
from moto.server import main

_signing_a_digest = contextvars.ContextVar("signing_a_digest", default=False)
_HASHES = {"ECDSA_SHA_256": hashes.SHA256, "ECDSA_SHA_384": hashes.SHA384, "ECDSA_SHA_512": hashes.SHA512}

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


KmsResponse.sign = _response_sign
ECDSAPrivateKey.sign = _key_sign

if __name__ == "__main__":
    sys.exit(main())
