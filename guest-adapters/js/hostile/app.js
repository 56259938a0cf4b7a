// A JavaScript guest built only for tests: it signs like soft-signer, except that
// the message `connect:HOST:PORT` makes it try an outgoing HTTP request there
// through wasi:http, the only network a guest's world has (JavaScript here has no
// file or socket API, and the gateway links the engine's wasi:filesystem import
// with no directory). It reports what it got as the error.

import { handle } from 'wasi:http/outgoing-handler@0.2.12';
import { Fields, OutgoingRequest } from 'wasi:http/types@0.2.12';
import { adapter as soft } from '../soft-signer/app.js';
import { defineAdapter, fail } from '../sdk/kmsgw.js';

function connect(authority) {
  try {
    const request = new OutgoingRequest(new Fields());
    request.setScheme({ tag: 'HTTP' });
    request.setAuthority(authority);
    request.setPathWithQuery('/from-a-js-guest');
    const pending = handle(request, undefined);
    pending.subscribe().block();
    const answer = pending.get();
    return `answered: ${JSON.stringify(answer)}`;
  } catch (e) {
    return `refused: ${e && e.payload ? JSON.stringify(e.payload) : e}`;
  }
}

export const adapter = defineAdapter({
  capabilities: soft.init('null'),
  generateKey: soft.generateKey,
  deleteKey: soft.deleteKey,
  sign(externalId, message, alg) {
    const text = new TextDecoder().decode(message);
    if (text.startsWith('connect:')) throw fail('internal', connect(text.slice('connect:'.length)));
    return soft.sign(externalId, message, alg);
  },
});
