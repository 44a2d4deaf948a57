// Test helpers: waiting on events with a bound (the bound only guards against a hang; nothing
// here sleeps to let something happen).

import crypto from "node:crypto";

export const LONG = 30000; // bound on any single wait (a loaded 2-core machine is slow)

let counter = 0;
/** A room name unique to this process and call. */
export function room(prefix = "t") {
  counter += 1;
  return `${prefix}:${process.pid}:${counter}:${crypto.randomBytes(3).toString("hex")}`;
}

export function withTimeout(promise, ms = LONG, what = "event") {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

/** Resolves with the arguments of the next `event` on `emitter` for which pred(...args) holds. */
export function once(emitter, event, pred = () => true, ms = LONG) {
  let fn;
  const p = new Promise((resolve) => {
    fn = (...args) => {
      if (pred(...args)) {
        emitter.off(event, fn);
        resolve(args);
      }
    };
    emitter.on(event, fn);
  });
  return withTimeout(p, ms, `${event}`).finally(() => emitter.off(event, fn));
}

/** Resolves when the client reaches `state` (at once when it is there already). */
export function state(sc, wanted, ms = LONG) {
  if (sc.state === wanted) return Promise.resolve([wanted, {}]);
  return once(sc, "state", (s) => s === wanted, ms);
}

/** Collects a subscription's messages; `until(n)` resolves once n arrived. */
export function collect(sub) {
  const got = [];
  const waiters = [];
  sub.on("message", (m) => {
    got.push(m);
    for (const w of [...waiters]) {
      if (got.length >= w.n) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(got);
      }
    }
  });
  return {
    got,
    until(n, ms = LONG) {
      if (got.length >= n) return Promise.resolve(got);
      return withTimeout(new Promise((resolve) => waiters.push({ n, resolve })), ms, `${n} messages (have ${got.length})`);
    },
  };
}

/** Records every state change of a client: [[state, detail], ...]. */
export function states(sc) {
  const list = [];
  sc.on("state", (s, d) => list.push([s, d]));
  return list;
}

/** An HS256 JSON Web Token. */
export function jwt(claims, secret) {
  const b64 = (x) => Buffer.from(JSON.stringify(x)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64(claims);
  const sig = crypto.createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}
