/**
 * SELinux: what the loaded policy lets a context do on each route to a uffd, asked of the kernel through selinuxfs,
 * which answers for any context without running anything in it: the type the "[userfaultfd]" anon inode gets there
 * (create), the permissions on it and on /dev/userfaultfd's label (access), whether the domain is permissive.
 * probe.ts loads this file only where SELinux is enabled; pid.ts for a process's context.
 *
 * ```ts
 * import { domainOf, policyOf } from "./selinux.ts";
 * const d = domainOf(sys, policyOf(sys), "system_u:system_r:svirt_t:s0", { whose: "libvirt's QEMU", scope: "qemu" });
 * d.denied; // { syscall: "EACCES", ... }: what QEMU gets on each route the policy refuses there
 * ```
 */

import type { Sys } from "./ffi.ts";
import * as K from "./ffi.ts";
import * as S from "./shared.ts";
import type * as T from "./types.ts";

const FS = "/sys/fs/selinux";
/** The name the kernel gives a uffd's anon inode, which a named type_transition matches. */
const ANON_NAME = "[userfaultfd]";
/**
 * What QEMU asks of the policy (measured with auditallow, QEMU 7.2 and 10): the device node opened O_RDWR, then
 * USERFAULTFD_IOC_NEW; the anon inode created, then its ioctls (UFFDIO_API, REGISTER) in QEMU's host check; its fault
 * events read once postcopy runs, after precopy.
 */
const NODE = ["open", "read", "write", "ioctl"];
const ANON = ["create", "ioctl"];
const LATE = ["read"];
const CLASSES = ["anon_inode", "chr_file", "capability", "process"] as const;
type ClassName = (typeof CLASSES)[number];

/** One selinuxfs transaction (access, create, context): the request written whole, the answer read on the same fd. */
function ask(sys: Sys, file: string, request: string): string | { error: string } {
  const said = (r: K.R) => ({ error: `${FS}/${file}: ${K.errnoName(r.errno)}` });
  const fd = sys.open(`${FS}/${file}`, K.O_RDWR | K.O_CLOEXEC);
  if (fd.ret < 0) return said(fd);
  try {
    const written = sys.write(fd.ret, request);
    if (written.ret < 0) return said(written); // EINVAL: a context the policy does not know
    const reply = new Uint8Array(4096);
    const r = sys.read(fd.ret, reply);
    return r.ret < 0 ? said(r) : K.latin1(reply.subarray(0, r.ret)).replace(/\0+$/, "");
  } finally {
    sys.close(fd.ret);
  }
}

/** The loaded policy, as far as a judgement needs it: its mode, what it does with what it does not declare, classes. */
export function policyOf(sys: Sys) {
  const read = (path: string) => sys.readText(`${FS}/${path}`)?.trim() ?? null;
  const classOf = (name: ClassName) => {
    const index = S.whole(read(`class/${name}/index`));
    // A permission's file holds its value, from 1: its bit in an access vector is value - 1.
    return index === null ? null : { index, bit: (perm: string) => S.whole(read(`class/${name}/perms/${perm}`)) };
  };
  return {
    enforcing: read("enforce") === "1",
    denyUnknown: read("deny_unknown") === "1",
    openPerms: read("policy_capabilities/open_perms") === "1",
    classes: Object.fromEntries(CLASSES.map((c) => [c, classOf(c)])) as Record<ClassName, ReturnType<typeof classOf>>,
  };
}
export type Policy = ReturnType<typeof policyOf>;

/** Which of `perms` the policy refuses `scon` on `tcon` of class `cls`, and whether scon's domain is permissive. */
type Refused = { perms: string[]; permissive: boolean } | { error: string };
function refused(sys: Sys, policy: Policy, scon: string, tcon: string, cls: ClassName, perms: string[]): Refused {
  const c = policy.classes[cls];
  // A class or permission the policy does not declare is allowed or denied as deny_unknown says; whether the domain
  // is permissive (which the kernel asks first) is asked of a class every policy declares.
  if (!c) {
    const domain: Refused =
      cls === "process" ? { perms, permissive: false } : refused(sys, policy, scon, scon, "process", []);
    return "error" in domain ? domain : { perms: policy.denyUnknown ? perms : [], permissive: domain.permissive };
  }
  const reply = ask(sys, "access", `${scon} ${tcon} ${c.index}`);
  if (typeof reply !== "string") return reply;
  const [allowed, , , , , flags = "0"] = reply.split(" ");
  if (!/^[0-9a-f]{1,8}$/.test(allowed)) return { error: `${FS}/access answered ${S.quoted(reply)}` };
  const bits = Number.parseInt(allowed, 16);
  const denies = (perm: string) => {
    const value = c.bit(perm);
    return value === null ? policy.denyUnknown : ((bits >>> (value - 1)) & 1) === 0;
  };
  return { perms: perms.filter(denies), permissive: (Number.parseInt(flags, 16) & 1) === 1 };
}

/** The label of a file (security.selinux), without its NUL; null when it has none or cannot be read. */
function labelOf(path: string) {
  const value = new Uint8Array(4096);
  const [name, attribute] = [K.cstr(path), K.cstr("security.selinux")];
  const n = Number(libc().getxattr(name, attribute, value, value.length));
  return n > 0 ? K.latin1(value.subarray(0, n)).replace(/\0+$/, "") : null;
}
let calls: ReturnType<typeof openCalls> | null = null;
const openCalls = () =>
  K.openLibc({
    getxattr: { args: [K.FFIType.ptr, K.FFIType.ptr, K.FFIType.ptr, K.FFIType.u64], returns: K.FFIType.i64_fast },
  });
const libc = () => (calls ??= openCalls());

/** A context's type ("svirt_t" of system_u:system_r:svirt_t:s0), when it is a plain policy name. */
const typeOf = (context: string) => context.split(":")[2]?.match(/^\w+$/)?.[0] ?? null;

/** What a judgement needs beyond the context: whose it is, whose answers it joins, the node, the kernel's gates. */
export type Asked = {
  whose: string;
  scope: T.Domain["scope"];
  /** /dev/userfaultfd as the context sees it (a path the probe may read the label of), or null: none there. */
  device?: string | null;
  /** Before 5.12 the kernel makes the uffd's anon inode with no label, and asks the policy nothing of it. */
  anonChecked?: boolean;
  /**
   * The syscall opens only by CAP_SYS_PTRACE (vm.unprivileged_userfaultfd 0), so the policy's capability is asked:
   * true when this run holds it (its refusal is then the syscall's EPERM), false when only a QEMU's file capability
   * could (qemuAnswers() reads the refusal then); undefined: not asked.
   */
  ptrace?: boolean;
  /**
   * This run's own context: an EACCES from the node's open() is the policy's, not its mode's: the run is root, the
   * mode lets everyone in, or the policy refused the node's stat() too.
   */
  notTheMode?: boolean;
};

/**
 * `context` judged on each route as QEMU walks it: the device node's open() and USERFAULTFD_IOC_NEW; the anon inode
 * both routes make (its type from the policy's named transition, else the domain's own), its ioctls, and the fault
 * events read after precopy; CAP_SYS_PTRACE where the syscall needs it. A permissive domain, or permissive mode,
 * refuses nothing: what it would refuse is said. Nothing is known of a context selinuxfs will not answer for.
 */
export function domainOf(sys: Sys, policy: Policy, context: string, q: Asked): T.Domain {
  const domain: T.Domain = { whose: q.whose, context, scope: q.scope, denied: {}, says: [], permissive: [], rules: [] };
  const anon = policy.classes.anon_inode;
  const created =
    anon && q.anonChecked !== false ? ask(sys, "create", `${context} ${context} ${anon.index} ${ANON_NAME}`) : context;
  if (typeof created !== "string") return { ...domain, unknown: created.error };
  const label = q.device ? labelOf(q.device) : null;
  // This run's own context may be refused the node's label (chr_file { getattr }): its open() is asked instead.
  if (q.device && label === null && q.scope !== "self")
    return { ...domain, unknown: `${S.DEVICE} has no SELinux label the probe can read` };
  const unlabelled = q.device && label === null ? openRefused(sys, q.device, q.notTheMode === true) : null;
  // Without open_perms the kernel never asks chr_file { open }.
  const nodePerms = NODE.filter((p) => p !== "open" || policy.openPerms);
  const asks: Array<{ tcon: string; cls: ClassName; perms: string[] }> = [
    ...(q.anonChecked === false ? [] : [{ tcon: created, cls: "anon_inode" as const, perms: [...ANON, ...LATE] }]),
    ...(label ? [{ tcon: label, cls: "chr_file" as const, perms: nodePerms }] : []),
    ...(q.ptrace !== undefined ? [{ tcon: context, cls: "capability" as const, perms: ["sys_ptrace"] }] : []),
  ];
  const denials: Array<{ tcon: string; cls: ClassName; perms: string[]; permissive: boolean }> = [];
  for (const { tcon, cls, perms } of asks) {
    const answer = refused(sys, policy, context, tcon, cls, perms);
    if ("error" in answer) return { ...domain, unknown: answer.error };
    if (answer.perms.length) denials.push({ tcon, cls, ...answer });
  }
  const of = (cls: ClassName) => denials.find((d) => d.cls === cls)?.perms ?? [];
  const denied: Partial<T.Answers> = {};
  if (of("anon_inode").length)
    Object.assign(denied, { device: "EACCES", syscall: "EACCES", "user-mode-only": "EACCES" });
  // The capability is asked before the anon inode is made: the syscall then says EPERM, where it is what opens it.
  const ptraceRefused = of("capability").length > 0;
  if (ptraceRefused && q.ptrace) denied.syscall = "EPERM";
  const node = of("chr_file");
  if (node.some((p) => p !== "ioctl")) Object.assign(denied, { "device-node": "EACCES", device: "EACCES" });
  else if (node.length) denied.device = "EACCES";
  if (unlabelled) Object.assign(denied, { "device-node": "EACCES", device: "EACCES" });
  const says = [...denials.map((d) => avc(context, d.tcon, d.cls, d.perms)), ...(unlabelled ? [unlabelled] : [])];
  const rules = denials.map((d) => rule(policy, context, d)).filter((r) => r !== null);
  // A permissive domain (the access flags) or permissive mode lets all of it through.
  const permissive = !policy.enforcing || denials.some((d) => d.permissive);
  return permissive
    ? { ...domain, permissive: says, rules }
    : { ...domain, denied, says, rules, ...(q.ptrace === false ? { ptraceRefused } : {}) };
}

/** The node's open() in this run's own context, refused where its mode lets it in: what the policy refuses, said. */
function openRefused(sys: Sys, device: string, notTheMode: boolean) {
  const r = sys.open(device, K.O_RDWR | K.O_CLOEXEC);
  if (r.ret >= 0) sys.close(r.ret);
  const refused = r.ret < 0 && K.errnoName(r.errno) === "EACCES" && notTheMode;
  const said = `open ${S.DEVICE}: EACCES, not its mode's: the policy refuses this context the node and its label`;
  return refused ? `${said} (chr_file { getattr })` : null;
}
/** A refusal as the kernel logs it, with when QEMU meets it. */
function avc(scon: string, tcon: string, cls: ClassName, perms: string[]) {
  const at = cls === "anon_inode" ? ` anonclass=${ANON_NAME}` : cls === "chr_file" ? ` path=${S.DEVICE}` : "";
  const late =
    cls === "anon_inode" && perms.every((p) => LATE.includes(p)) ? " (once postcopy runs, after precopy)" : "";
  return `avc: denied { ${perms.join(" ")} } for${at} scontext=${scon} tcontext=${tcon} tclass=${cls}${late}`;
}
/**
 * The local policy rule (CIL) that allows exactly `perms`: only what the policy declares (a class or permission it
 * does not declare is refused as deny_unknown says, which no local rule can name); null where nothing is left, or a
 * type is no plain policy name.
 */
function rule(policy: Policy, scon: string, d: { tcon: string; cls: ClassName; perms: string[] }) {
  const [source, target] = [typeOf(scon), typeOf(d.tcon)];
  const declared = d.perms.filter((p) => policy.classes[d.cls]?.bit(p) != null);
  const self = d.cls === "capability" ? "self" : target;
  return source && self && declared.length ? `(allow ${source} ${self} (${d.cls} (${declared.join(" ")})))` : null;
}

/** A context the loaded policy knows, as it writes it; a usage error for anything else (--context). */
export function contextAsked(sys: Sys, context: string) {
  const known = /^[\w.:,-]+$/.test(context) ? ask(sys, "context", context) : { error: "not a context" };
  if (typeof known === "string") return known;
  throw new S.UsageError(`--context ${S.quoted(context)}: not a context the loaded policy knows (${known.error})`);
}

/**
 * The contexts a run on this host answers for: its own (whose answers the kernel gave), --context's if asked, else
 * those QEMU is started in here, read from the policy's own context files: libvirt's (virtual_domain_context, its
 * first line: KVM guests) and, on a Kubernetes node, the container runtime's (container-selinux's contexts, else
 * lxc_contexts: `process`), where KubeVirt's QEMU runs.
 */
export function hostDomains(sys: Sys, f: T.Facts, asked: string | null): T.Domain[] {
  const policy = policyOf(sys);
  const gates = {
    device: f.device,
    notTheMode: f.uid === 0 || /^c.{6}rw/.test(f.devnode?.mode ?? "") || (f.device !== null && f.devnode === null),
    anonChecked: S.atLeast(f.kernel, 5, 12),
    ptrace: f.unprivilegedUserfaultfd === 1 ? undefined : f.capSysPtrace === true,
  };
  const own = sys.readText("/proc/self/attr/current")?.replace(/\0/g, "").trim();
  const self = own ? [domainOf(sys, policy, own, { ...gates, whose: "this run", scope: "self" })] : [];
  if (asked !== null)
    return [...self, domainOf(sys, policy, contextAsked(sys, asked), { ...gates, whose: "--context", scope: "all" })];
  const type =
    sys.readText("/etc/selinux/config")?.match(/^\s*SELINUXTYPE\s*=\s*"?([\w.-]+)"?\s*$/m)?.[1] ?? "targeted";
  const contexts = `/etc/selinux/${type}/contexts`;
  const libvirt = sys.readText(`${contexts}/virtual_domain_context`)?.split("\n")[0].trim();
  const kubelet = sys.stat("/var/lib/kubelet").ret === 0;
  const runtime = sys.readText("/usr/share/containers/selinux/contexts") ?? sys.readText(`${contexts}/lxc_contexts`);
  const container = kubelet ? runtime?.match(/^\s*process\s*=\s*"([^"]+)"/m)?.[1] : undefined;
  const qemu: Array<[string | undefined, string]> = [
    [libvirt, "libvirt's QEMU (virtual_domain_context)"],
    [container, "a container runtime's QEMU (KubeVirt: the runtime's process context)"],
  ];
  return [
    ...self,
    ...qemu.flatMap(([context, whose]) =>
      context ? [domainOf(sys, policy, context, { ...gates, whose, scope: "qemu" })] : [],
    ),
  ];
}

/**
 * /dev/userfaultfd where the policy refuses this run its stat() (chr_file { getattr }), which QEMU never asks: a node
 * on devtmpfs, where only the kernel and root make nodes, is the device, and is opened as QEMU opens it.
 */
export function onDevtmpfs(sys: Sys, path: string) {
  // The node itself (no link followed), named as the kernel's devtmpfs names the misc device it has.
  if (path !== S.DEVICE || sys.readText("/sys/class/misc/userfaultfd/uevent")?.includes("DEVNAME=userfaultfd") !== true)
    return false;
  const fd = sys.open(path, K.O_PATH | K.O_NOFOLLOW | K.O_CLOEXEC);
  if (fd.ret < 0) return false;
  // A link there is no device: its own stat() answers (its class is not the node's), and says so.
  const st = sys.stat("", fd.ret, K.AT_EMPTY_PATH);
  const named = st.ret < 0 && K.errnoName(st.errno) === "EACCES" && linkOf(sys, `/proc/self/fd/${fd.ret}`) === S.DEVICE;
  const mount = S.field(sys.readText(`/proc/self/fdinfo/${fd.ret}`), "mnt_id");
  sys.close(fd.ret);
  const mounts = sys.readText("/proc/self/mountinfo") ?? "";
  const devtmpfs = new RegExp(`^${mount} \\d+ \\S+ \\S+ /dev .* - devtmpfs `, "m");
  return named && mount !== null && devtmpfs.test(mounts);
}
/** Where a link points, or null. */
const linkOf = (_: Sys, path: string) => {
  try {
    return (require("node:fs") as typeof import("node:fs")).readlinkSync(path);
  } catch {
    return null;
  }
};

/** The check that says which contexts the run answered for, and what each lets QEMU do. */
export function domainsCheck(f: T.Facts, a: T.Answers | null, qemu: T.Qemu | null): T.Check {
  const head = { id: "selinux", title: "the SELinux contexts QEMU runs in" };
  const domains = f.domains ?? [];
  const consumer = S.qemuConsumer(qemu);
  const said = domains.map((d) => {
    if (d.unknown) return `${d.whose} (${d.context}): could not be asked: ${d.unknown}`;
    const seen = a ? { ...a, ...d.denied } : null;
    const route = seen ? S.CONSUMERS[consumer](seen).at(-1)! : null;
    const refusedOn = S.ROUTES.filter((r) => d.denied[r]).join(", ");
    const takes = route && d.scope !== "self" ? `; QEMU takes the ${route}: ${seen![route]}` : "";
    const verdict = d.permissive.length
      ? `would refuse, were it enforcing: ${d.permissive.join("; ")}`
      : refusedOn
        ? `refuses ${refusedOn}${takes}`
        : `refuses nothing QEMU asks${takes}`;
    return `${d.whose} (${d.context}): ${verdict}`;
  });
  // It fails where a context refuses the route QEMU takes there; the device refused, QEMU 8.0+ takes the syscall.
  const fails = domains.some((d) => {
    const seen = a && { ...a, ...d.denied };
    return seen !== null && d.denied[S.CONSUMERS[consumer](seen).at(-1)!] !== undefined;
  });
  const unknown = domains.some((d) => d.unknown && d.scope !== "self");
  const permissive = domains.some((d) => d.permissive.length);
  const status = fails ? "fail" : unknown ? "skip" : permissive ? "warn" : "pass";
  const mode = f.selinux === "enforcing" ? "enforcing" : "permissive mode";
  return { ...head, status, detail: `${mode}; ${said.join("; ")}` };
}

/** What the run could not answer for a context QEMU runs in: its policy could not be asked. */
export const unanswered = (domains: T.Domain[]): T.Unjudged[] =>
  domains
    .filter((d) => d.unknown && d.scope !== "self")
    .map((d) => [
      `SELinux: ${d.whose} (${d.context}) could not be judged: ${d.unknown}`,
      "run the probe as root in a domain that may ask selinuxfs (unconfined_t)",
    ]);

/** The contexts whose refusals stand now (not those of a permissive domain or mode). */
const refusing = (f: T.Facts) => (f.domains ?? []).filter((d) => d.says.length && !d.permissive.length && !d.unknown);
/** container-selinux 2.248.0 allows container domains userfaultfd_t (containers/container-selinux#463). */
const CONTAINER_SELINUX =
  "dnf upgrade container-selinux   # 2.248.0 and later allow container domains userfaultfd_t (the upgrade path)";

/** The selinux cause, as a row of diagnosis.ts's table (its README entry too). */
export const CAUSES = {
  selinux: {
    when: ({ f }) => f.selinux === "enforcing" && refusing(f).length > 0,
    blocks: "selinux",
    summary: ({ f }) =>
      `SELinux refuses ${refusing(f)
        .map((d) => d.whose)
        .join(" and ")} what a userfaultfd needs`,
    evidence: [({ f }) => refusing(f).flatMap((d) => [`${d.whose}: ${d.context}`, ...d.says])],
    fix: [({ f }) => refusing(f).flatMap(fixesOf)],
  },
} satisfies Record<string, T.Cause>;

/** A local policy module that allows exactly what `d` refuses, and the package that ships the rule, where one does. */
function fixesOf(d: T.Domain) {
  const type = typeOf(d.context);
  const unlabelled = d.says.some((s) => s.startsWith(`open ${S.DEVICE}`));
  const label = `postcopy-probe --context ${S.sh(d.context)}   # as root, outside it: the node's label, and the rule`;
  if (!type || d.rules.length === 0) return unlabelled ? [label] : [];
  // Named after its rules too: a module for other refusals later never replaces this one.
  const name = `postcopy_${type}_${Bun.hash(d.rules.join("\n")).toString(16).slice(0, 8)}`;
  const printed = d.rules.map(S.sh).join(" ");
  const install = `> ${name}.cil && semodule -i ${name}.cil`;
  const module = `printf '%s\\n' ${printed} ${install}   # allows exactly what ${type} is refused`;
  const container = type.startsWith("container_") && d.says.some((s) => /tcontext=\S*:userfaultfd_t:/.test(s));
  return [module, ...(container ? [CONTAINER_SELINUX] : []), ...(unlabelled ? [label] : [])];
}
