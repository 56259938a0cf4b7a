// soft-signer-js: ES256 keys inside the guest (with @noble/curves), sealed by the
// gateway in the provider's storage. The JavaScript counterpart of the Rust
// soft-signer, and the template `kmsgw adapter new --lang js` writes.

import { p256 } from '@noble/curves/p256';
import { ALG, defineAdapter, fail, jwk, storage } from '../sdk/kmsgw.js';

const stored = (kid) => `key/${kid}`;

function describe(kid, privateKey) {
  storage.set(stored(kid), privateKey);
  return { externalId: kid, publicJwk: jwk.ec('P-256', p256.getPublicKey(privateKey, false)) };
}

export const adapter = defineAdapter({
  capabilities: {
    canCreate: true, canImport: false, canDelete: true, algs: [ALG.ES256], defaultAlg: ALG.ES256,
  },

  generateKey(kid, spec) {
    if (spec.alg !== ALG.ES256) throw fail('unsupported', `${spec.alg} is not supported`);
    return describe(kid, p256.utils.randomPrivateKey());
  },

  sign(externalId, message, alg) {
    if (alg !== ALG.ES256) throw fail('unsupported', `${alg} is not supported`);
    const privateKey = storage.get(stored(externalId));
    if (privateKey === undefined) throw fail('not-found', `no key ${externalId}`);
    return p256.sign(message, privateKey, { prehash: true }).toCompactRawBytes();
  },

  deleteKey(externalId) {
    storage.remove(stored(externalId));
  },
});
