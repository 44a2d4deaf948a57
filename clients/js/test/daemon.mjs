// Test helper: the real shardcast daemon (target/release/shardcast, or $SHARDCAST_BIN) in a
// child process, with its own TOML config in a temp directory. scripts/test-js.sh starts one
// for the whole run and exports SHARDCAST_URL; tests that must kill or reconfigure a daemon
// start their own with startDaemon().

import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(here, "../../..");
export const BIN = process.env.SHARDCAST_BIN ?? join(ROOT, "target/release/shardcast");

/** Base config of the tests: two shards, no admin listener (it would clash between daemons). */
export function baseConfig(extra = "") {
  return `[server]\nlisten = "127.0.0.1:0"\nshards = 2\ndemo_pages = false\n\n[admin]\nlisten = ""\n\n${extra}\n`;
}

/**
 * Start a daemon with `config` (TOML text, see baseConfig) on `port` (0: any free one).
 * Resolves once its start-up line names the address; `kill(signal)` resolves when it exited;
 * `restart()` starts the same config on the same port again.
 */
export function startDaemon({ config = baseConfig(), port = 0, args = [] } = {}) {
  if (!existsSync(BIN)) throw new Error(`${BIN} missing: run cargo build --release first`);
  const dir = mkdtempSync(join(tmpdir(), "shardcast-js-"));
  const cfg = join(dir, "shardcast.toml");
  writeFileSync(cfg, config);
  const proc = spawn(BIN, ["--config", cfg, "--listen", `127.0.0.1:${port}`, ...args], {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, RUST_LOG: "info", NO_COLOR: "1", RUST_BACKTRACE: "0" },
  });
  const log = [];
  let exited = null;
  const exit = new Promise((r) =>
    proc.once("exit", (code, signal) => {
      exited = { code, signal };
      rmSync(dir, { recursive: true, force: true });
      r(exited);
    }),
  );
  return new Promise((resolveStart, rejectStart) => {
    let pending = "";
    let started = false;
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      rejectStart(new Error(`daemon did not start within 30 s:\n${log.join("\n")}`));
    }, 30000);
    proc.stderr.setEncoding("utf8");
    proc.stderr.on("data", (chunk) => {
      pending += chunk;
      const lines = pending.split("\n");
      pending = lines.pop();
      for (const line of lines) {
        log.push(line);
        if (log.length > 60) log.shift();
        const m = !started && line.includes("shardcast started") && /listen=(\S+)/.exec(line);
        if (m) {
          started = true;
          clearTimeout(timer);
          const addr = m[1];
          const p = Number(addr.slice(addr.lastIndexOf(":") + 1));
          resolveStart({
            proc,
            port: p,
            addr,
            url: `ws://${addr}/ws`,
            http: `http://${addr}`,
            log,
            exit,
            get exited() {
              return exited;
            },
            kill(signal = "SIGTERM") {
              if (!exited) proc.kill(signal);
              return exit;
            },
            restart(moreArgs = args) {
              return startDaemon({ config, port: p, args: moreArgs });
            },
          });
        }
      }
    });
    exit.then((e) => {
      if (!started) {
        clearTimeout(timer);
        rejectStart(new Error(`daemon exited (${JSON.stringify(e)}) before starting:\n${log.join("\n")}`));
      }
    });
  });
}

let shared = null;

/**
 * The daemon of the run: SHARDCAST_URL when scripts/test-js.sh started one, else one started
 * for this test file (stopped when the process exits).
 */
export async function sharedDaemonUrl() {
  if (process.env.SHARDCAST_URL) return process.env.SHARDCAST_URL;
  if (!shared) {
    shared = startDaemon();
    const d = await shared;
    process.once("exit", () => d.proc.kill("SIGKILL"));
    d.proc.unref();
    d.proc.stderr.unref?.();
  }
  return (await shared).url;
}
