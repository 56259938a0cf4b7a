// The kmsgw web console: a client of the gateway's public REST API, served by the
// gateway itself. The API key's token lives in this tab's session storage only.
// Everything shown comes from API answers and is written as text, never as HTML.
"use strict";

const TOKEN = "kmsgw.token";
// A certificate that expires within this many days is shown as a warning.
const WARN_DAYS = 30;
const DAY_MS = 24 * 60 * 60 * 1000;

const main = document.getElementById("main");
let me = null; // {apiKey, tenant, scopes}

// ---------------------------------------------------------------- helpers

/** An element with attributes (`on…` functions become listeners) and children. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replaces the page's content (arrays are flattened, empty parts skipped). */
function show(...nodes) {
  main.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
}

/** A failed API call: the gateway's status, code and message. */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** One call of the REST API with the session's token; JSON in and out. */
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
  });
  const type = response.headers.get("content-type") || "";
  const answer = type.startsWith("application/json") ? await response.json() : await response.text();
  if (!response.ok) {
    if (response.status === 401) signOut("The gateway no longer accepts this API key.");
    throw new ApiError(response.status, answer.code || "error", answer.error || String(answer));
  }
  return answer;
}

/** Whether the signed-in key holds `scope` (admin holds every scope). */
function may(scope) {
  return !!me && (me.scopes.includes(scope) || me.scopes.includes("admin"));
}

function message(text, error) {
  return h("div", { class: error ? "message error" : "message", role: error ? "alert" : "status" }, text);
}

function failure(e) {
  return message(e instanceof ApiError ? `${e.status} ${e.code}: ${e.message}` : String(e), true);
}

function when(text) {
  if (!text) return "—";
  const date = new Date(text);
  return isNaN(date) ? text : date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

/** Certificate expiry as text and a class: expired, warning band, fine. */
function expiry(notAfter) {
  const left = new Date(notAfter).getTime() - Date.now();
  const days = Math.floor(left / DAY_MS);
  if (left <= 0) return h("span", { class: "bad", "data-expiry": "expired" }, `expired ${when(notAfter)}`);
  if (days < WARN_DAYS)
    return h("span", { class: "warn", "data-expiry": "soon" }, `expires in ${days} day${days === 1 ? "" : "s"} (${when(notAfter)})`);
  return h("span", { class: "ok", "data-expiry": "ok" }, `${when(notAfter)}`);
}

function versionsText(key) {
  return (key.versions || []).map((v) => `v${v.version} ${v.state}`).join(", ");
}

function fields(pairs) {
  return h("dl", { class: "fields" }, pairs.flatMap(([name, value]) => [h("dt", {}, name), h("dd", {}, value)]));
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** A filter bar of labelled `inputs` (by their `name`) that puts their values in
 * the hash of `page`; `extra` goes after its button. */
function filterForm(page, inputs, extra) {
  return h(
    "form",
    {
      class: "toolbar",
      onsubmit: (event) => {
        event.preventDefault();
        const next = new URLSearchParams();
        for (const input of Object.values(inputs)) if (input.value) next.set(input.name, input.value);
        location.hash = page + "?" + next.toString();
      },
    },
    Object.entries(inputs).map(([label, input]) => h("label", {}, label, input)),
    h("button", { type: "submit" }, "Filter"),
    extra,
  );
}

/** Runs `work` on each item, at most `width` at a time. */
async function each(items, width, work) {
  let next = 0;
  const lanes = Array.from({ length: Math.min(width, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await work(items[i], i);
    }
  });
  await Promise.all(lanes);
}

// ---------------------------------------------------------------- sign in

function signOut(why) {
  sessionStorage.removeItem(TOKEN);
  me = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("who").textContent = "";
  renderSignIn(why);
}

function renderSignIn(why) {
  const token = h("input", { type: "password", name: "token", id: "token", autocomplete: "off", required: true });
  const form = h(
    "form",
    {
      class: "card signin",
      onsubmit: async (event) => {
        event.preventDefault();
        sessionStorage.setItem(TOKEN, token.value);
        try {
          await start();
        } catch (e) {
          sessionStorage.removeItem(TOKEN);
          renderSignIn(e instanceof ApiError && e.status === 401 ? "That API key is not valid." : String(e));
        }
      },
    },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Use an API key of this gateway. It is kept in this tab only."),
    why ? message(why, true) : null,
    h("label", { for: "token" }, "API key token", token),
    h("p", {}, h("button", { class: "primary", type: "submit" }, "Sign in")),
  );
  show(form);
  token.focus();
}

async function start() {
  me = await api("GET", "/whoami");
  document.getElementById("who").textContent =
    `${me.apiKey || "no API keys"}${me.tenant ? " · tenant " + me.tenant : ""} · ${me.scopes.join(", ")}`;
  const nav = document.getElementById("nav");
  for (const link of nav.querySelectorAll("a[data-needs]")) link.hidden = !may(link.dataset.needs);
  nav.hidden = false;
  document.getElementById("sign-out").hidden = false;
  await route();
}

// ---------------------------------------------------------------- keys

/** Every key the API key may see (pages of 1000). */
async function allKeys() {
  const keys = [];
  let cursor = null;
  do {
    const page = await api("GET", "/keys?limit=1000" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
    keys.push(...page.keys);
    cursor = page.nextCursor;
  } while (cursor && keys.length < 20000);
  return keys;
}

async function renderKeys(params) {
  show(h("h1", {}, "Keys"), h("p", { class: "muted" }, "Loading…"));
  const keys = await allKeys();
  const query = params.get("q") || "";
  const alg = params.get("alg") || "";
  const provider = params.get("provider") || "";
  const options = (values, chosen) =>
    [h("option", { value: "" }, "any")].concat(
      [...new Set(values)].sort().map((v) => h("option", { value: v, selected: v === chosen }, v)),
    );
  const search = h("input", { type: "search", name: "q", value: query, placeholder: "kid contains…" });
  const algs = h("select", { name: "alg" }, options(keys.map((k) => k.alg), alg));
  const providers = h("select", { name: "provider" }, options(keys.map((k) => k.provider), provider));
  const filter = filterForm("#/keys", { Search: search, Algorithm: algs, Provider: providers });
  const chosen = keys.filter(
    (k) => k.kid.includes(query) && (!alg || k.alg === alg) && (!provider || k.provider === provider),
  );
  const shown = chosen.slice(0, 100);
  const body = h("tbody");
  const table = h(
    "table",
    { id: "keys" },
    h(
      "thead",
      {},
      h("tr", {}, ["Kid", "Algorithm", "Provider", "Versions", "Rotation", "Next rotation", "Certificate", "Signs", "Last used"].map((t) => h("th", {}, t))),
    ),
    body,
  );
  show(
    h("h1", {}, "Keys"),
    filter,
    h("p", { class: "muted" }, `${chosen.length} of ${keys.length} keys` + (chosen.length > shown.length ? `; the first ${shown.length} shown` : "")),
    table,
  );
  // Lists carry no versions, policy or certificate: read each shown key.
  await each(shown, 6, async (listed) => {
    let key = listed;
    try {
      key = await api("GET", "/keys/" + encodeURIComponent(listed.kid));
    } catch (e) {
      // Deleted since the list: show what the list said.
    }
    body.append(
      h(
        "tr",
        { "data-kid": key.kid },
        h("td", {}, h("a", { href: "#/key/" + encodeURIComponent(key.kid) }, key.kid)),
        h("td", {}, key.alg),
        h("td", {}, key.provider),
        h("td", {}, versionsText(key) || `v${key.version}`),
        h("td", {}, key.rotation ? key.rotation.every || "on request" : "—"),
        h("td", {}, when(key.nextRotationAt)),
        h("td", {}, key.certificate ? expiry(key.certificate.notAfter) : "—"),
        h("td", {}, String(key.signCount)),
        h("td", {}, when(key.lastUsedAt)),
      ),
    );
  });
}

async function renderKey(kid, note) {
  const key = await api("GET", "/keys/" + encodeURIComponent(kid));
  const path = "/keys/" + encodeURIComponent(kid);
  const parts = [
    h("h1", {}, "Key ", h("code", {}, key.kid)),
    note ? message(note) : null,
    h(
      "div",
      { class: "card" },
      fields([
        ["Provider", key.provider],
        ["Algorithm", key.alg],
        ["Current version", `v${key.version} (${key.jwkKid})`],
        ["Created", when(key.createdAt)],
        ["Signs", String(key.signCount)],
        ["Last used", when(key.lastUsedAt)],
        ["Rotation", key.rotation ? `${key.rotation.every ? "every " + key.rotation.every : "on request"}, grace ${key.rotation.grace}` : "—"],
        ["Next rotation", when(key.nextRotationAt)],
        ["Certificate", key.certificate ? h("span", {}, key.certificate.subject + ", ", expiry(key.certificate.notAfter)) : "none"],
      ]),
    ),
    h("h2", {}, "Versions"),
    h(
      "table",
      { id: "versions" },
      h("thead", {}, h("tr", {}, ["Version", "State", "JWK kid", "Created", "Grace until", "Retired", "Certificate"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        (key.versions || []).map((v) =>
          h(
            "tr",
            { "data-version": v.version },
            h("td", {}, `v${v.version}`),
            h("td", {}, v.state),
            h("td", {}, h("code", {}, v.jwkKid)),
            h("td", {}, when(v.createdAt)),
            h("td", {}, when(v.graceUntil)),
            h("td", {}, when(v.retiredAt)),
            h("td", {}, v.x5c ? `chain of ${v.x5c.length}` : "—"),
          ),
        ),
      ),
    ),
  ];
  if (key.x5c) {
    const chain = await api("GET", path + "/certificate");
    parts.push(h("h2", {}, "Certificate chain"), h("pre", { id: "chain" }, chain));
  }
  if (may("keys:create")) {
    parts.push(h("h2", {}, "Actions"), actions(key, path));
  }
  show(...parts);
}

/** Rotate, CSR and certificate issue forms for a key (keys:create scope). */
function actions(key, path) {
  const out = h("div", { id: "result" });
  const act = async (work) => {
    out.replaceChildren(h("p", { class: "muted" }, "Working…"));
    try {
      await work();
    } catch (e) {
      out.replaceChildren(failure(e));
    }
  };
  const rotate = h(
    "button",
    {
      id: "rotate",
      type: "button",
      onclick: () =>
        act(async () => {
          const rotated = await api("POST", path + "/rotate", {});
          await renderKey(key.kid, `Rotated: version ${rotated.version} is current.`);
        }),
    },
    "Rotate now",
  );
  const csrSubject = h("input", { name: "subject", value: `CN=${key.kid}`, required: true });
  const csr = h(
    "form",
    {
      class: "inline",
      id: "csr",
      onsubmit: (event) => {
        event.preventDefault();
        act(async () => {
          const made = await api("POST", path + "/csr", { subject: csrSubject.value });
          out.replaceChildren(h("h2", {}, "Certification request"), h("pre", { id: "csr-pem" }, made.csr));
        });
      },
    },
    h("label", {}, "CSR subject", csrSubject),
    h("button", { type: "submit" }, "Make CSR"),
  );
  const subject = h("input", { name: "subject", value: `CN=${key.kid}`, required: true });
  const days = h("input", { name: "validityDays", type: "number", min: 1, max: 36500, value: 365, required: true });
  const issuer = h("input", { name: "issuerKid", placeholder: "self-signed" });
  const issue = h(
    "form",
    {
      class: "inline",
      id: "issue",
      onsubmit: (event) => {
        event.preventDefault();
        act(async () => {
          const request = { subject: subject.value, validityDays: Number(days.value) };
          if (issuer.value) request.issuerKid = issuer.value;
          await api("POST", path + "/certificate/issue", request);
          await renderKey(key.kid, "Certificate issued.");
        });
      },
    },
    h("label", {}, "Subject", subject),
    h("label", {}, "Validity (days)", days),
    h("label", {}, "Issuer key", issuer),
    h("button", { type: "submit" }, "Issue certificate"),
  );
  return h("div", { class: "card" }, h("div", { class: "toolbar" }, rotate), csr, issue, out);
}

// ---------------------------------------------------------------- providers

async function renderProviders() {
  const providers = await api("GET", "/providers");
  let health = [];
  if (may("admin")) health = await api("GET", "/health/kms");
  const healthOf = (id) => health.find((line) => line.providerId === id);
  const rows = providers.map((p) => {
    const line = healthOf(p.id);
    return h(
      "tr",
      { "data-provider": p.id },
      h("td", {}, p.id),
      h("td", {}, p.adapter ? `${p.type} (${p.adapter})` : p.type),
      h("td", {}, line ? (line.ok ? h("span", { class: "ok" }, "ok") : h("span", { class: "bad" }, "down: " + (line.error || ""))) : "—"),
      h("td", {}, line ? `${line.latencyMs} ms` : "—"),
      h("td", {}, p.capabilities.supportedAlgs.join(" ")),
    );
  });
  const guests = providers
    .filter((p) => p.limits)
    .map((p) => {
      const limits = p.limits;
      const usage = p.usage;
      const pairs = [
        ["Memory", `${limits.memoryMb} MiB per instance`],
        ["Call deadline", `${limits.timeoutMs} ms`],
      ];
      if (usage) {
        pairs.push(
          [
            "Storage",
            h(
              "span",
              { "data-storage-bytes": usage.storageBytes },
              h("meter", { min: 0, max: limits.storageBytes, value: usage.storageBytes }),
              ` ${bytes(usage.storageBytes)} of ${bytes(limits.storageBytes)}`,
            ),
          ],
          ["Entries", `${usage.storageEntries} of ${limits.storageEntries}`],
          ["Instances", `${usage.instancesInUse} in use of ${usage.instances}`],
          ["Log lines dropped", String(usage.logLinesDropped)],
          ["Traps / timeouts", `${usage.traps} / ${usage.timeouts}`],
          ["Denied egress", String(usage.deniedEgress)],
        );
      }
      return h("div", { class: "card", "data-guest": p.id }, h("h2", {}, `Guest ${p.id}`), fields(pairs));
    });
  show(
    h("h1", {}, "Providers"),
    may("admin") ? null : h("p", { class: "muted" }, "Health and guest use need the admin scope."),
    h(
      "table",
      { id: "providers" },
      h("thead", {}, h("tr", {}, ["Id", "Type", "Health", "Latency", "Algorithms"].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows),
    ),
    guests,
  );
}

// ---------------------------------------------------------------- audit

const ACTIONS = ["create", "import", "delete", "force-delete", "sign", "sign-digest", "rotate", "csr", "certificate-import", "certificate-issue", "reload"];

async function renderAudit(params) {
  const kid = params.get("kid") || "";
  const action = params.get("action") || "";
  const after = params.get("after") || "";
  const query = new URLSearchParams({ limit: "100" });
  if (kid) query.set("kid", kid);
  if (action) query.set("action", action);
  if (after) query.set("after", after);
  const page = await api("GET", "/audit?" + query.toString());
  const kidInput = h("input", { name: "kid", value: kid, placeholder: "any" });
  const actionSelect = h(
    "select",
    { name: "action" },
    [h("option", { value: "" }, "any")].concat(ACTIONS.map((a) => h("option", { value: a, selected: a === action }, a))),
  );
  const verdict = h("div", { id: "verdict" });
  const body = h(
    "tbody",
    {},
    page.records.map((r) =>
      h(
        "tr",
        { "data-seq": r.seq },
        h("td", {}, String(r.seq)),
        h("td", {}, when(new Date(r.time).toISOString())),
        h("td", {}, r.apiKey || "—"),
        h("td", {}, r.tenant || "—"),
        h("td", {}, r.action),
        h("td", {}, r.kid || "—"),
        h("td", {}, r.provider || "—"),
        h("td", {}, r.outcome),
      ),
    ),
  );
  const verify = h(
    "button",
    {
      id: "verify",
      type: "button",
      onclick: async () => {
        try {
          const result = await api("GET", "/audit/verify");
          for (const row of body.querySelectorAll("tr.broken")) row.classList.remove("broken");
          if (result.ok) {
            verdict.replaceChildren(message(`Chain intact: ${result.checked} records verified.`));
          } else {
            verdict.replaceChildren(message(`Chain BROKEN at record ${result.firstBadSeq} (${result.checked} checked).`, true));
            const row = body.querySelector(`tr[data-seq="${result.firstBadSeq}"]`);
            if (row) row.classList.add("broken");
          }
        } catch (e) {
          verdict.replaceChildren(failure(e));
        }
      },
    },
    "Verify chain",
  );
  const filter = filterForm("#/audit", { Kid: kidInput, Action: actionSelect }, verify);
  const more = page.nextAfter
    ? (() => {
        const next = new URLSearchParams(query);
        next.delete("limit");
        next.set("after", page.nextAfter);
        return h("p", {}, h("a", { href: "#/audit?" + next.toString(), id: "more" }, "Next page"));
      })()
    : null;
  show(
    h("h1", {}, "Audit log"),
    filter,
    verdict,
    h(
      "table",
      { id: "audit" },
      h("thead", {}, h("tr", {}, ["Seq", "Time", "API key", "Tenant", "Action", "Kid", "Provider", "Outcome"].map((t) => h("th", {}, t)))),
      body,
    ),
    more,
  );
}

// ---------------------------------------------------------------- routing

async function route() {
  if (!me) return;
  const [path, search] = (location.hash.slice(1) || "/keys").split("?");
  const params = new URLSearchParams(search || "");
  const page = path.split("/")[1] || "keys";
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("current", link.dataset.page === page);
  try {
    if (path.startsWith("/key/")) await renderKey(decodeURIComponent(path.slice("/key/".length)));
    else if (page === "providers") await renderProviders();
    else if (page === "audit") await renderAudit(params);
    else await renderKeys(params);
  } catch (e) {
    show(failure(e));
  }
}

window.addEventListener("hashchange", route);
document.getElementById("sign-out").addEventListener("click", () => signOut());
if (sessionStorage.getItem(TOKEN) !== null) start().catch(() => signOut());
else renderSignIn();
