// The kmsgw guest SDK for JavaScript: typed helpers over the bindings that
// componentize-js generates for `kmsgw:adapter@0.4.0`.
//
//   import { defineAdapter, fail, storage, jwk, ALG } from '../sdk/kmsgw.js';
//   export const adapter = defineAdapter({ capabilities, generateKey, sign, ... });
//
// A method that throws `fail(kind, message)` returns that error case to the
// gateway (`not-found` 404, `unsupported` 405, `invalid-input` 400, `denied` 502,
// `unavailable` 503, `internal` 502); anything else thrown becomes `internal`.

import * as wit from 'kmsgw:adapter/storage@0.4.0';
import { log as witLog } from 'kmsgw:adapter/log@0.4.0';

/** The algorithms of the contract, as the bindings spell them. */
export const ALG = Object.freeze({
  ES256: 'es256', ES384: 'es384', ES512: 'es512', EdDSA: 'eddsa', RS256: 'rs256', PS256: 'ps256',
  'ML-DSA-44': 'ml-dsa44', 'ML-DSA-65': 'ml-dsa65', 'ML-DSA-87': 'ml-dsa87',
});

const KINDS = ['not-found', 'unsupported', 'invalid-input', 'denied', 'unavailable', 'internal'];

/** An error the gateway maps to its HTTP status; throw it. */
export function fail(kind, message) {
  if (!KINDS.includes(kind)) throw new Error(`unknown error kind ${kind}`);
  const error = new Error(message);
  error.payload = { tag: kind, val: String(message) };
  return error;
}

/** Lines in the gateway log (never log key material). */
export const log = {
  debug: (message) => witLog('debug', String(message)),
  info: (message) => witLog('info', String(message)),
  warn: (message) => witLog('warn', String(message)),
  error: (message) => witLog('error', String(message)),
};

/** The provider's private storage, sealed by the host. Values are Uint8Arrays. */
export const storage = {
  /** The value under `key`, or undefined. */
  get: (key) => wit.get(key) ?? undefined,
  set: (key, value) => wit.set(key, value),
  /** Whether `key` was there. */
  remove: (key) => wit.delete(key),
  list: (prefix) => wit.listKeys(prefix),
};

/** Unpadded base64url, the JOSE form. */
export function base64url(bytes) {
  let text = '';
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** JWK builders for the public keys the gateway expects. */
export const jwk = {
  /** An uncompressed SEC1 point `04 ‖ x ‖ y` on `crv` (`P-256`, `P-384`, `P-521`). */
  ec(crv, point) {
    const size = { 'P-256': 32, 'P-384': 48, 'P-521': 66 }[crv];
    if (!size || point.length !== 1 + 2 * size || point[0] !== 4) {
      throw fail('internal', `not an uncompressed ${crv} point`);
    }
    return JSON.stringify({
      kty: 'EC', crv, x: base64url(point.slice(1, 1 + size)), y: base64url(point.slice(1 + size)),
    });
  },
  ed25519: (publicKey) => JSON.stringify({ kty: 'OKP', crv: 'Ed25519', x: base64url(publicKey) }),
};

/**
 * The `adapter` export from an implementation: `init(config)` (the parsed config;
 * returns the adapter's state or nothing), `capabilities` ({canCreate, canImport,
 * canDelete, algs, defaultAlg, signsDigests?}), `generateKey(kid, {alg, rsaBits})`,
 * `importKey(kid, privateJwk, alg)`, `sign(externalId, message, alg)` (returns the
 * JOSE signature), `signDigest(externalId, digest, alg)` (the same for a hash
 * the client computed; only with `signsDigests: true`), `deleteKey(externalId)`
 * and `health()`. Missing operations answer `unsupported` (health answers ok).
 */
export function defineAdapter(impl) {
  const guard = (name, method) => (...args) => {
    try {
      return method(...args);
    } catch (e) {
      if (e && e.payload && KINDS.includes(e.payload.tag)) throw e;
      throw fail('internal', `${name}: ${e && e.message ? e.message : e}`);
    }
  };
  const unsupported = (what) => () => { throw fail('unsupported', `this adapter cannot ${what}`); };
  return {
    init: guard('init', (config) => {
      if (impl.init) impl.init(JSON.parse(config));
      return { signsDigests: false, ...impl.capabilities };
    }),
    generateKey: guard('generateKey', impl.generateKey ?? unsupported('create keys')),
    importKey: guard('importKey', impl.importKey ?? unsupported('import keys')),
    sign: guard('sign', impl.sign ?? unsupported('sign')),
    signDigest: guard('signDigest', impl.signDigest ?? unsupported('sign digests')),
    deleteKey: guard('deleteKey', impl.deleteKey ?? unsupported('delete keys')),
    health: guard('health', impl.health ?? (() => {})),
  };
}
