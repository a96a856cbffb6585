/**
 * What talks to QEMU itself: `--qemu` starts the installed QEMU (or a given one) as an incoming VM
 * with no guest, disk or network, and asks it over QMP to turn postcopy-ram on. probe.ts loads this
 * module only when such an option is used, so a default run does not pay for it.
 *
 * ```ts
 * import { askQemu } from "./qemu.ts";
 * const answer = askQemu("/usr/bin/qemu-system-x86_64", 5000); // { version, accepts, message } or why not
 * ```
 */
import type { Sys } from "./ffi.ts";
import type { Capability, Check, Facts, Options } from "./probe.ts";

/** QEMU's own answer, and whether (and why not) it agrees with the probe's. */
export type QemuAnswer = {
  path: string;
  version: string;
  accepts: boolean;
  message: string;
  agrees?: boolean;
  why?: string;
};

/** Where QEMU is looked for when --qemu names none: qemu-system-ARCH on $PATH, then these. */
const QEMU_PLACES = ["/usr/libexec/qemu-kvm", "/usr/bin/qemu-kvm"];
const QMP = [
  { execute: "qmp_capabilities" },
  { execute: "migrate-set-capabilities", arguments: { capabilities: [{ capability: "postcopy-ram", state: true }] } },
  { execute: "quit" },
]
  .map((c) => `${JSON.stringify(c)}\n`)
  .join("");
const ARGS = [
  "-machine",
  "none",
  "-nodefaults",
  "-no-user-config",
  "-display",
  "none",
  "-incoming",
  "defer",
  "-qmp",
  "stdio",
];

/** The JSON objects among a child's output lines; lines that are not JSON are left out. */
function replies(out: string) {
  return out.split("\n").flatMap((line) => {
    try {
      return [JSON.parse(line)];
    } catch {
      return [];
    }
  });
}

/**
 * The installed QEMU's own answer: an incoming VM with no guest, no disk and no network, asked over
 * QMP on stdio to turn postcopy-ram on, as `migrate-set-capabilities` does before a migration.
 */
export function askQemu(path: string, timeoutMs: number): QemuAnswer | string {
  let run: ReturnType<typeof Bun.spawnSync>;
  try {
    const stdin = new TextEncoder().encode(QMP);
    run = Bun.spawnSync([path, ...ARGS], { stdin, timeout: timeoutMs, killSignal: "SIGKILL" });
  } catch (e) {
    return (e as Error).message;
  }
  if (run.exitedDueToTimeout) return `no answer within ${timeoutMs} ms: killed`;
  const [out, err] = [run.stdout?.toString() ?? "", run.stderr?.toString() ?? ""];
  const got = replies(out);
  const v = got.find((r) => r.QMP)?.QMP.version.qemu;
  const [, answer] = got.filter((r) => "return" in r || "error" in r);
  if (!v || !answer) return `no QMP answer (exit status ${run.exitCode}): ${err.trim().split("\n")[0]}`;
  // QEMU before 8.0 says why on stderr ("postcopy_ram_supported_by_host: userfaultfd not available: ...").
  const why = err.split("\n").filter((l) => /postcopy|userfault/i.test(l));
  const message = answer.error ? [answer.error.desc, ...why].join(": ") : "";
  return { path, version: `${v.major}.${v.minor}.${v.micro}`, accepts: !answer.error, message };
}

/** Why QEMU disagrees with the probe, when the probe knows. */
function disagreement(answer: QemuAnswer, routes: Record<string, string>, probeSays: boolean) {
  if (probeSays && routes.device === "ok" && routes.syscall !== "ok" && Number(answer.version.split(".")[0]) < 8) {
    const fails = `opens only userfaultfd(2), refused here (${routes.syscall}): this QEMU will fail`;
    return `QEMU ${answer.version} predates 8.0 and ${fails}; QEMU 8.0+ or one of the fixes would work`;
  }
  return "the reason is not known to the probe: QEMU's answer decides";
}

/** The --qemu check: QEMU's answer beside the probe's, and why they differ when the reason is known. */
export function checkQemu(
  sys: Sys,
  facts: Facts,
  routes: Record<string, string>,
  caps: Record<Capability, boolean>,
  opts: Options,
) {
  const head = { id: "qemu", title: "QEMU's own answer (migrate-set-capabilities)" };
  const given = opts.qemu!;
  const name = `qemu-system-${facts.arch}`;
  const found = () =>
    Bun.which(name, { PATH: process.env.PATH ?? "" }) ?? QEMU_PLACES.find((q) => sys.stat(q).ret === 0);
  const path = given === true ? found() : given;
  const looked = [`${name} on $PATH`, ...QEMU_PLACES].join(", ");
  if (!path) return { check: { ...head, status: "skip", detail: `no QEMU found: looked for ${looked}` } as Check };
  const answer = askQemu(path, opts.qemuMs);
  if (typeof answer === "string") return { check: { ...head, status: "fail", detail: `${path}: ${answer}` } as Check };
  const probeSays = caps["postcopy-ram"];
  const said = `QEMU ${answer.version} ${answer.accepts ? "accepts" : "rejects"} postcopy-ram`;
  answer.agrees = answer.accepts === probeSays;
  if (!answer.agrees) answer.why = disagreement(answer, routes, probeSays);
  const told = `${said}${answer.accepts ? "" : `: ${answer.message}`}`;
  const differ = `THE PROBE SAID ${probeSays ? "YES" : "NO"}: ${answer.why}`;
  const detail = answer.agrees ? `${told}, as the probe says` : `${told}; ${differ}`;
  const status = answer.accepts && answer.agrees ? "pass" : "fail";
  return { check: { ...head, status, detail } as Check, answer };
}
