"""moto's server with two behaviours fixed to match real AWS KMS, and one extension.

1. Sign honours MessageType=DIGEST. moto 5.2.5 ignores MessageType and always
   hashes what it is given, so a DIGEST request is signed over SHA-256(digest) and
   can never verify. Real AWS KMS signs the digest as given.
2. RSASSA_PSS_* signatures use a salt as long as the hash. moto uses the longest
   salt that fits; AWS KMS documents the salt length as the hash length (which is
   also what JOSE's PS256 requires).

3. EXTENSION: ML-DSA keys, which moto 5.2.5 does not have. Written from the AWS
   KMS API reference: key specs ML_DSA_44/65/87 (KeyUsage SIGN_VERIFY), signing
   algorithm ML_DSA_SHAKE_256 only, MessageType RAW (1 to 4096 bytes, signed as
   pure ML-DSA with an empty context) or EXTERNAL_MU (exactly the 64-byte mu of
   FIPS 204, signed as given); DIGEST is refused for ML-DSA keys and EXTERNAL_MU
   for all others (ValidationException). GetPublicKey returns the RFC 9881
   SubjectPublicKeyInfo. RAW signing uses Python `cryptography`; signing a given
   mu uses `dilithium-py`, which exposes FIPS 204's external-mu interface.

Otherwise moto's server runs unchanged:

    python3 moto_kms_digest.py -H 127.0.0.1 -p PORT
"""

import contextvars
import sys
import threading

import moto.kms.models as kms_models
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa, padding, utils
from dilithium_py.ml_dsa import ML_DSA_44, ML_DSA_65, ML_DSA_87
from moto.kms.exceptions import ValidationException
from moto.kms.responses import KmsResponse
from moto.kms.utils import AbstractPrivateKey, ECDSAPrivateKey, KeySpec, RSAPrivateKey
from moto.server import main

_message_type = contextvars.ContextVar("message_type", default="RAW")
_ML_DSA = {
    "ML_DSA_44": (mldsa.MLDSA44PrivateKey, ML_DSA_44),
    "ML_DSA_65": (mldsa.MLDSA65PrivateKey, ML_DSA_65),
    "ML_DSA_87": (mldsa.MLDSA87PrivateKey, ML_DSA_87),
}
_ML_DSA_SIGNING = "ML_DSA_SHAKE_256"
# dilithium-py keeps state in its parameter-set objects: one signature at a time.
_external_mu_lock = threading.Lock()
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
    token = _message_type.set(self._get_param("MessageType") or "RAW")
    try:
        return _moto_response_sign(self)
    finally:
        _message_type.reset(token)


def _signing_a_digest():
    if _message_type.get() == "EXTERNAL_MU":
        raise ValidationException("MessageType EXTERNAL_MU is only valid for ML-DSA keys.")
    return _message_type.get() == "DIGEST"


def _key_sign(self, message, signing_algorithm):
    if _signing_a_digest():
        prehashed = utils.Prehashed(_HASHES[signing_algorithm]())
        return self.private_key.sign(message, ec.ECDSA(prehashed))
    return _moto_key_sign(self, message, signing_algorithm)


def _rsa_sign(self, message, signing_algorithm):
    hash_algorithm = _RSA[signing_algorithm]()
    if signing_algorithm.startswith("RSASSA_PSS"):
        pad = padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=padding.PSS.DIGEST_LENGTH)
    else:
        pad = padding.PKCS1v15()
    if _signing_a_digest():
        hash_algorithm = utils.Prehashed(hash_algorithm)
    return self.private_key.sign(message, pad, hash_algorithm)


class MlDsaPrivateKey(AbstractPrivateKey):
    """An ML-DSA key: its 32-byte seed, as `cryptography` and `dilithium-py` load it."""

    def __init__(self, key_spec):
        maker, self.expanded = _ML_DSA[key_spec]
        self.private_key = maker.generate()
        _, self.expanded_secret = self.expanded.key_derive(self.private_key.private_bytes_raw())

    def _check(self, signing_algorithm):
        if signing_algorithm != _ML_DSA_SIGNING:
            raise ValidationException(
                f"SigningAlgorithm {signing_algorithm} is not valid for an ML-DSA key; use {_ML_DSA_SIGNING}.")

    def sign(self, message, signing_algorithm):
        self._check(signing_algorithm)
        message_type = _message_type.get()
        if message_type == "EXTERNAL_MU":
            if len(message) != 64:
                raise ValidationException("An EXTERNAL_MU message must be 64 bytes.")
            with _external_mu_lock:
                return self.expanded.sign_external_mu(self.expanded_secret, message)
        if message_type != "RAW":
            raise ValidationException(f"MessageType {message_type} is not valid for ML-DSA keys; use RAW or EXTERNAL_MU.")
        if len(message) > 4096:
            raise ValidationException("A RAW message must be at most 4096 bytes.")
        return self.private_key.sign(message)

    def verify(self, message, signature, signing_algorithm):
        self._check(signing_algorithm)
        try:
            self.private_key.public_key().verify(signature, message)
            return True
        except InvalidSignature:
            return False

    def public_key(self):
        return self.private_key.public_key().public_bytes(
            encoding=serialization.Encoding.DER,
            format=serialization.PublicFormat.SubjectPublicKeyInfo,
        )


_moto_generate_private_key = kms_models.generate_private_key
_moto_key_specs = KeySpec.key_specs.__func__
_moto_signing_algorithms = kms_models.Key.signing_algorithms


def _generate_private_key(key_spec):
    if key_spec in _ML_DSA:
        return MlDsaPrivateKey(key_spec)
    return _moto_generate_private_key(key_spec)


def _signing_algorithms(self):
    if self.key_spec in _ML_DSA:
        return [_ML_DSA_SIGNING]
    return _moto_signing_algorithms.fget(self)


KmsResponse.sign = _response_sign
ECDSAPrivateKey.sign = _key_sign
RSAPrivateKey.sign = _rsa_sign
KeySpec.key_specs = classmethod(lambda cls: sorted(_moto_key_specs(cls) + list(_ML_DSA)))
kms_models.generate_private_key = _generate_private_key
kms_models.Key.signing_algorithms = property(_signing_algorithms)

if __name__ == "__main__":
    sys.exit(main())
