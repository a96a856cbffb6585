/**
 * Why, and what to run: one typed table of causes, each a gate on what the checks and facts show, what it stands in
 * the way of, the evidence read from the host, and fixes a person can paste into a root shell on that host. Pure: it
 * reads nothing but the sysctl files that say where vm.unprivileged_userfaultfd is set. probe.ts loads this file only
 * when a capability failed; qemu.ts, pid.ts and vm.ts add the rows only they can have.
 *
 * ```ts
 * import { diagnose } from "./diagnosis.ts";
 * const causes = diagnose(seen); // [{ cause: "unprivileged-userfaultfd", summary, blocks, evidence, fix }, ...]
 * ```
 */
import type { Sys } from "./ffi.ts";
import * as S from "./shared.ts";
import type * as T from "./types.ts";

/** libvirt's own default cgroup_device_acl (qemu.conf), which a fix must keep. */
const LIBVIRT_ACL = ["null", "full", "zero", "random", "urandom", "ptmx", "kvm", "userfaultfd"].map((d) => `/dev/${d}`);
const QEMU_CONF = "/etc/libvirt/qemu.conf";
const loadQemu = () => require("./qemu.ts") as typeof import("./qemu.ts");

/** Where vm.unprivileged_userfaultfd is set at boot: systemd-sysctl's files merged by name, then /etc/sysctl.conf. */
export function sysctlSource(sys: Sys) {
  const { readdirSync } = require("node:fs") as typeof import("node:fs");
  const list = (dir: string) => {
    try {
      return readdirSync(dir).map((n) => [n, `${dir}/${n}`] as const);
    } catch {
      return [];
    }
  };
  // The same name in an earlier directory wins; the files then apply in the order of their names.
  const files = new Map(SYSCTL_DIRS.flatMap(list).reverse());
  const order = [...files.keys()].filter((n) => n.endsWith(".conf")).sort();
  const settings = (file: string) => [...(sys.readText(file) ?? "").matchAll(SETS)].map((m) => ({ file, value: m[1] }));
  // Of every line that sets it, in the order they apply, the last is what boot leaves.
  return [...order.map((n) => files.get(n)!), "/etc/sysctl.conf"].flatMap(settings).at(-1) ?? null;
}
const SYSCTL_DIRS = ["/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d", "/lib/sysctl.d"];
const SETS = /^\s*-?\s*vm[./]unprivileged_userfaultfd\s*=\s*(\S+)/gm;

const missingOf = (checks: T.Check[]) => checks.flatMap((c) => c.missing ?? []);
/** Failing capabilities whose consumer takes `route` and is refused there: only those can a gate on it block. */
function refusedOn({ f, a, failing, qemu }: T.Seen, route: T.Route) {
  return failing.filter((cap) => {
    const answers = S.NEEDS[cap].consumer === "qemu" ? S.qemuAnswers(a, f, qemu) : a;
    const consumer =
      S.NEEDS[cap].consumer === "qemu" ? S.qemuConsumer(qemu) : (S.NEEDS[cap].consumer as T.ConsumerName);
    return S.CONSUMERS[consumer](answers).includes(route) && answers[route] !== "ok";
  });
}
/** Failing capabilities refused on a route among those `answers` name. */
const refusedOnAny = (s: T.Seen, answers: Partial<T.Answers>) => [
  ...new Set(S.ROUTES.flatMap((r) => (answers[r] ? refusedOn(s, r) : []))),
];
const ofQemu = (caps: T.Capability[]) => caps.filter((cap) => S.NEEDS[cap].consumer === "qemu");
/** The node's mode lets everyone read and write it: an EACCES is not its mode's. */
const modeAllows = (f: T.Facts) => /^c.{6}rw/.test(f.devnode?.mode ?? "");
/** The node's mode refuses this user for certain: not root, and no owner's, group's or others' bits grant rw. */
const modeRefuses = (f: T.Facts) => {
  const mode = f.devnode?.mode ?? "";
  const owner = f.devnode?.uid === f.uid && mode.slice(1, 3) === "rw";
  return f.uid !== 0 && !!f.devnode && !owner && mode.slice(4, 6) !== "rw" && mode.slice(7, 9) !== "rw";
};
/** The device node's open() is SELinux's to refuse here (selinux.ts), not its mode's. */
const selinuxRefusesNode = (f: T.Facts) => !!{ ...S.deniedIn(f, "self"), ...S.deniedIn(f, "all") }["device-node"];
/** Failing capabilities that need one of `checks` passed. */
const needing = ({ failing }: T.Seen, checks: T.Check[]) =>
  failing.filter((cap) => S.NEEDS[cap].checks.some((id) => checks.some((c) => c.id === id)));
/**
 * Checks of QEMU's sequence failed by a call the probe's own seccomp filter refused: EPERM or ENOSYS where the kernel
 * answers neither (CRIU's EVENT_FORK aside, which is EPERM without CAP_SYS_PTRACE).
 */
const refusedCalls = ({ f, checks }: T.Seen) =>
  S.filtered(f) && !f.filter
    ? checks.filter(
        (c) => c.status === "fail" && ["EPERM", "ENOSYS"].includes(c.errno ?? "") && !NOT_FILTERED.includes(c.id),
      )
    : [];
const NOT_FILTERED = ["uffd-open", "criu-events"];
/** Checks of QEMU's sequence failed by a call the policy refused this run: EACCES, which only an LSM answers there. */
const refusedByPolicy = ({ checks }: T.Seen) =>
  checks.filter((c) => c.status === "fail" && c.errno === "EACCES" && c.id !== "uffd-open");
/** What a cause can stand in the way of, by where its gate is (a cause's `blocks`). */
const BLOCKS: Record<string, (s: T.Seen) => T.Capability[]> = {
  kernel: (s) => s.failing,
  // A filter of the process's refuses routes by name; the probe's own is told on the syscall's, and by the checks
  // whose calls it refused.
  filtered: (s) =>
    s.f.filter
      ? refusedOnAny(s, s.f.filter.answers)
      : [
          ...new Set([
            ...(S.filterDeniesSyscall(s.f, s.a) ? refusedOn(s, "syscall") : []),
            ...needing(s, refusedCalls(s)),
          ]),
        ],
  profiled: (s) => refusedOnAny(s, s.f.apparmor?.denied ?? {}),
  // SELinux (selinux.ts): this run's context and --pid's or --context's refuse every consumer, QEMU's only QEMU.
  // This run's own context refuses where the kernel answered it: a route, or a check's call (UFFDIO_API: EACCES).
  selinux: (s) => [
    ...new Set([
      ...refusedOnAny(s, { ...S.deniedIn(s.f, "self"), ...S.deniedIn(s.f, "all") }),
      ...ofQemu(refusedOnAny(s, S.deniedIn(s.f, "qemu"))),
      ...(Object.keys(S.deniedIn(s.f, "self")).length ? needing(s, refusedByPolicy(s)) : []),
    ]),
  ],
  device: (s) => refusedOn(s, "device"),
  syscall: (s) => refusedOn(s, "syscall"),
  "qemu-device": (s) => ofQemu(refusedOn(s, "device")),
  qemu: (s) => ofQemu(s.failing),
  multifd: (s) => s.failing.filter((cap) => cap === "postcopy-multifd"),
  criu: (s) => s.failing.filter((cap) => cap === "criu-lazy-pages"),
  "page-size": (s) => s.failing.filter((cap) => S.NEEDS[cap].checks.includes("page-size")),
  features: (s) => s.failing.filter((cap) => needed(cap).some((n) => missingOf(s.checks).includes(n))),
  note: () => [],
};
/** The feature and ioctl names a capability's checks ask for. */
const needed = (cap: T.Capability) => {
  const need: S.Need = S.NEEDS[cap];
  const registrations = S.REGISTRATIONS.filter((r) => need.checks.includes(r.id)).map(S.needs);
  const features = registrations.reduce((mask, r) => mask | r.feature, S.featureMask(...(need.features ?? [])));
  return [...S.missingFeatures(0n, features), ...registrations.flatMap((r) => S.missingIoctls(0n, r.ioctls))];
};

/** The first kernel with each flag, feature or ioctl, per architecture where they differ. */
const SINCE: Record<string, string | Record<string, string>> = {
  UFFD_FEATURE_THREAD_ID: "4.14",
  // Write-protect needs the architecture's page-table bit: x86_64 had it first.
  UFFD_FEATURE_PAGEFAULT_FLAG_WP: { x86_64: "5.7", aarch64: "6.10" },
  UFFDIO_WRITEPROTECT: { x86_64: "5.7", aarch64: "6.10" },
  UFFD_USER_MODE_ONLY: "5.11",
  [S.DEVICE]: "6.1",
};
/** The architectures whose kernels can be built with pages larger than 4 KiB. */
const LARGER_PAGES = ["aarch64", "ppc64", "loongarch64"];
/** How to get `name`: the first Linux with it on this architecture (4.11 for the events and shmem/hugetlbfs). */
function boot(name: string, f: T.Facts) {
  const v = SINCE[name] ?? "4.11";
  const at = typeof v === "string" ? v : v[f.arch];
  if (!at) return `no Linux release for ${f.arch} has ${name} yet`;
  return `boot Linux ${at} or later for ${name} (this is ${f.kernel})`;
}

/** What the device node's open() answered this user. */
const openedAs = ({ f, a }: T.Seen) => `open as ${f.user}: ${a["device-node"]}`;
/** The probe's own seccomp filters, as its status shows them. */
const ownFilters = ({ f }: T.Seen) => `Seccomp: 2 in /proc/self/status (${f.seccompFilters} filters)`;
const SYSCTL = "sysctl -w vm.unprivileged_userfaultfd=1";
/** A pod template's seccomp profile, as kubectl patch sets it: PROFILE.json is in the kubelet's seccomp directory. */
const POD_PROFILE = JSON.stringify({
  spec: {
    template: {
      spec: { securityContext: { seccompProfile: { type: "Localhost", localhostProfile: "PROFILE.json" } } },
    },
  },
});
const SECCOMP = [
  "docker run --security-opt seccomp=PROFILE.json ...   # PROFILE.json allowing userfaultfd",
  "podman run --security-opt seccomp=PROFILE.json ...",
  `kubectl patch deployment NAME -p '${POD_PROFILE}'   # its pods (Kubernetes)`,
  "systemctl edit UNIT   # a systemd unit: no SystemCallFilter= that denies userfaultfd",
];
const UDEV = `echo 'KERNEL=="userfaultfd", GROUP="kvm", MODE="0660"' > /etc/udev/rules.d/99-userfaultfd.rules`;
const CONTAINER = `docker run --device ${S.DEVICE} ...   # a container: or podman run --device`;

/** Where the running value comes from at boot. */
const sysctlFrom = ({ sysctlSource: from }: T.Evidence) =>
  from ? `${from.file} sets ${from.value}` : "no sysctl file sets it";
/** The file that makes the sysctl stick: named to sort after the file that sets it now, so it wins. */
function persistSysctl({ f }: T.Seen) {
  const from = f.sysctlSource?.file;
  if (from === "/etc/sysctl.conf")
    return "sed -i 's/^\\s*vm.unprivileged_userfaultfd\\s*=.*/vm.unprivileged_userfaultfd = 1/' /etc/sysctl.conf";
  const last = from?.split("/").at(-1) ?? "";
  const name = "99-userfaultfd.conf" > last ? "99-userfaultfd.conf" : `${last}-userfaultfd.conf`;
  return `echo vm.unprivileged_userfaultfd=1 > ${S.sh(`/etc/sysctl.d/${name}`)}`;
}
/** Lets QEMU's user into the device: the kvm group, a udev rule for every boot, and the node as it is now. */
function deviceAccess({ f }: T.Seen) {
  const user = f.uid === 0 && f.qemuUser ? f.qemuUser : f.user;
  return [
    ...(f.kvmGroup ? [] : ["groupadd -r kvm"]),
    `usermod -aG kvm ${S.sh(user)}   # QEMU started after this gets it`,
    `${UDEV}   # each boot`,
    `chgrp kvm ${S.DEVICE} && chmod 0660 ${S.DEVICE}   # now`,
  ];
}
/** A node made 0600 is root's alone: a user other than root needs its way in too. */
const userAccess = (s: T.Seen) => (s.f.miscMinor !== null && s.f.uid !== 0 ? deviceAccess(s) : null);
/** The lines a cause's `says` give for what the diagnosis sees. */
const lines = (says: T.Says[], s: T.Seen) => says.flatMap((x) => (typeof x === "string" ? [x] : (x(s) ?? [])));
/**
 * The decision table, in the order to act on the causes. An upgrade path (a newer kernel or QEMU) comes after the fixes
 * this host takes, whatever its place here.
 */
export const CAUSES = {
  "target-page-size": {
    // QEMU: "Target page size bigger than host page size"
    when: ({ checks }) => checks.some((c) => c.id === "page-size" && c.status === "fail"),
    blocks: "page-size",
    upgrade: () => true,
    summary: "the guest's pages are larger than the host's: QEMU refuses postcopy",
    evidence: [({ checks }) => `page-size: ${checks.find((c) => c.id === "page-size")?.detail}`],
    fix: [
      ({ f }) =>
        LARGER_PAGES.includes(f.arch)
          ? `boot a ${f.arch} kernel built with pages at least as large as the guest's (this one's are ${f.pageSize} B)`
          : `none on ${f.arch}, whose pages are always ${f.pageSize} B: migrate this guest without postcopy`,
    ],
  },
  "no-kernel-support": {
    // ENOSYS with no filter to explain it, no device that opened, and no sysctl (which comes with CONFIG_USERFAULTFD);
    // or gVisor's kernel, which implements no userfaultfd.
    when: ({ f, a }) =>
      a.syscall !== "ok" &&
      (f.gvisor || (a.syscall === "ENOSYS" && !f.seccomp && a.device !== "ok" && f.unprivilegedUserfaultfd === null)),
    blocks: "kernel",
    summary: "this kernel has no userfaultfd (CONFIG_USERFAULTFD off, before 4.3, or gVisor)",
    evidence: [
      ({ f }) =>
        f.gvisor
          ? `/proc/version: gVisor (release ${f.kernel}), which implements no userfaultfd`
          : `kernel ${f.kernel}: no vm.unprivileged_userfaultfd, which a kernel with CONFIG_USERFAULTFD has`,
      S.answered,
    ],
    fix: [
      ({ f }) =>
        f.gvisor
          ? [
              "docker run --runtime=runc ...   # not --runtime=runsc",
              "kubectl edit pod ...   # drop runtimeClassName: gvisor",
            ]
          : "boot a kernel built with CONFIG_USERFAULTFD=y",
    ],
  },
  "devnode-missing": {
    when: ({ a }) => a["device-node"] === "ENOENT",
    blocks: "device",
    // A kernel without the device: a kernel upgrade, the path after the fixes this kernel takes.
    upgrade: ({ f }) => f.miscMinor === null,
    summary: `${S.DEVICE} is not there`,
    evidence: [
      ({ f }) =>
        f.miscMinor === null
          ? "no userfaultfd in /proc/misc: this kernel has no such device"
          : `/proc/misc: ${f.miscMinor} userfaultfd: the kernel has it, this /dev not`,
    ],
    fix: [
      ({ f }) =>
        f.miscMinor === null
          ? `${boot(S.DEVICE, f)}   # the upgrade path`
          : [CONTAINER, ...(f.ownDev ? [] : [`mknod -m 0600 ${S.DEVICE} c 10 ${f.miscMinor}   # this host`])],
      userAccess,
    ],
  },
  "devnode-impostor": {
    // ENODEV: the probe found something else at the device's path, or a file system it does not enter.
    when: ({ a }) => a["device-node"] === "ENODEV",
    blocks: "device",
    summary: ({ f }) =>
      f.devnode
        ? `${S.DEVICE} is not the userfaultfd device: the probe did not open it`
        : `${S.DEVICE} was not looked at: the way to it crosses a file system the probe does not enter`,
    evidence: [
      ({ f }) =>
        f.devnode
          ? `${S.DEVICE}: ${f.devnode.mode}, ${f.devnode.kind}, not c 10:${f.miscMinor ?? "?"}`
          : `${S.DEVICE}: behind FUSE (which may never answer), or a mount the probe cannot place`,
    ],
    // Nothing to mend where nothing was looked at; no node replaced where it is the process's own (pasted on the
    // host, that would replace the host's).
    fix: [
      ({ f }) => (f.devnode ? CONTAINER : null),
      ({ f }) =>
        !f.devnode || f.miscMinor === null || f.ownDev
          ? null
          : `rm ${S.DEVICE} && mknod -m 0600 ${S.DEVICE} c 10 ${f.miscMinor}`,
      (s) => (s.f.devnode ? userAccess(s) : null),
    ],
  },
  "libvirt-device-acl": {
    when: ({ f }) => S.libvirtHidesDevice(f),
    blocks: "qemu-device",
    summary: `libvirt's cgroup_device_acl leaves ${S.DEVICE} out of QEMU's /dev and device cgroup`,
    evidence: [({ f }) => `${QEMU_CONF}: cgroup_device_acl = [${f.libvirt?.deviceAcl?.join(", ")}]`],
    fix: [
      `sed -i 's|^\\(\\s*cgroup_device_acl\\s*=\\s*\\[\\)|\\1"${S.DEVICE}", |' ${QEMU_CONF}   # keeps the rest`,
      `systemctl try-restart libvirtd virtqemud   # libvirt's own list: ${LIBVIRT_ACL.join(", ")}`,
    ],
  },
  "devnode-permission": {
    // The mode is asked before any LSM: where it refuses for certain, it is the cause whatever SELinux would say.
    when: ({ f, a }) =>
      a["device-node"] === "EACCES" &&
      !f.apparmor?.denied["device-node"] &&
      (modeRefuses(f) || (!selinuxRefusesNode(f) && !modeAllows(f))),
    blocks: "device",
    summary: `${S.DEVICE}'s mode and owner do not let this user in`,
    evidence: [({ f }) => `${S.DEVICE}: ${f.devnode?.mode} ${f.devnode?.owner} ${f.devnode?.group}`, openedAs],
    fix: [deviceAccess],
  },
  "device-cgroup": {
    // The kernel's EPERM for a device node is a device cgroup's (v1 devices.list, or v2's BPF program): --pid names
    // the process's own cgroup and the rule it lacks (pid.ts).
    when: ({ a }) => a["device-node"] === "EPERM",
    blocks: "device",
    summary: ({ f }) => `a device cgroup denies ${S.DEVICE} (c 10:${f.miscMinor}), whatever its mode`,
    evidence: [openedAs],
    fix: [CONTAINER, `systemctl set-property UNIT DeviceAllow='${S.DEVICE} rw'   # a systemd unit`],
  },
  seccomp: {
    // --pid: the process's filters, read and run; else the probe's own filter, told from how it answers.
    when: (s) =>
      s.f.filter
        ? Object.keys(s.f.filter.answers).length > 0
        : S.filterDeniesSyscall(s.f, s.a) || refusedCalls(s).length > 0,
    blocks: "filtered",
    summary: "a seccomp filter denies calls QEMU makes for its userfaultfd",
    evidence: [
      (s) =>
        s.f.filter
          ? Object.values(s.f.filter.says)
          : [
              ownFilters(s),
              ...(S.filterDeniesSyscall(s.f, s.a) ? [S.answered(s)] : []),
              ...refusedCalls(s).map((c) => `${c.id}: ${c.detail}`),
            ],
    ],
    fix: [({ f }) => f.filter?.fix ?? null, ...SECCOMP],
  },
  "user-namespace": {
    when: ({ f }) => f.unprivilegedUserfaultfd === 0 && f.capSysPtrace === true && f.userNamespace === true,
    blocks: "syscall",
    summary: "CAP_SYS_PTRACE is held only inside a user namespace, where userfaultfd ignores it",
    evidence: [({ f }) => `uid_map: ${f.uidMap} (the initial user namespace has ${S.INITIAL_UID_MAP})`, S.answered],
    fix: [`${SYSCTL}   # on the host`, (s) => `${persistSysctl(s)}   # on the host`],
  },
  "unprivileged-userfaultfd": {
    // At 0 the sysctl refuses whoever lacks CAP_SYS_PTRACE (one held only in a user namespace is user-namespace's);
    // otherwise an EPERM that UFFD_USER_MODE_ONLY escapes tells it.
    when: ({ f, a }) =>
      f.unprivilegedUserfaultfd === 0
        ? f.capSysPtrace === false
        : a.syscall === "EPERM" && a["user-mode-only"] === "ok" && !f.userNamespace,
    blocks: "syscall",
    summary: "vm.unprivileged_userfaultfd is 0 and this user lacks CAP_SYS_PTRACE",
    evidence: [
      S.answered,
      ({ f }) => `vm.unprivileged_userfaultfd = ${f.unprivilegedUserfaultfd ?? "unreadable"} (${sysctlFrom(f)})`,
      ({ f }) => `CAP_SYS_PTRACE: not held by ${f.user} (uid ${f.uid})`,
      // The probe's own filter, which it cannot read: a process's, read and run, says so itself.
      ({ f, a }) =>
        S.filtered(f) && !f.filter && !S.filterDeniesSyscall(f, a)
          ? "Seccomp: 2: whether the filter denies userfaultfd(2) too shows once the sysctl allows it"
          : null,
    ],
    // A QEMU was read (the syscall said EPERM): its file capability, when only QEMU is refused.
    fix: [SYSCTL, persistSysctl, (s) => (ofQemu(BLOCKS.syscall(s)).length ? loadQemu().setcap(s) : null)],
  },
  "criu-needs-ptrace": {
    // Linux 5.5+: UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE in the initial user namespace, whatever the sysctl.
    when: ({ checks }) => checks.some((c) => c.id === "criu-events" && /^UFFDIO_API.*: EPERM$/.test(c.detail)),
    blocks: "criu",
    summary: "CRIU's lazy pages ask for UFFD_FEATURE_EVENT_FORK, which needs CAP_SYS_PTRACE (initial user namespace)",
    evidence: [({ checks }) => `criu-events: ${checks.find((c) => c.id === "criu-events")?.detail}`],
    fix: ["criu lazy-pages --images-dir DIR ...   # as root on the host, whose CAP_SYS_PTRACE counts"],
  },
  "missing-feature": {
    when: ({ checks }) => missingOf(checks).length > 0,
    blocks: "features",
    upgrade: () => true,
    summary: "the kernel lacks a feature or ioctl a capability needs",
    evidence: [({ checks }) => checks.filter((c) => c.missing?.length).map((c) => `${c.id}: ${c.detail}`)],
    fix: [({ f, checks }) => [...new Set(missingOf(checks))].map((n) => boot(n, f))],
  },
} satisfies Record<string, T.Cause>;
export const CAUSE_IDS = Object.keys(CAUSES);

/**
 * Why, and what to run: every gate that holds and stands in the way of a capability that failed, the fixes this host
 * takes first and the upgrade paths after them, each fix once. `more` adds causes (a QEMU's version: qemu.ts; a running
 * process: pid.ts, vm.ts) and refines rows of the table by their id.
 */
export function diagnose(s: T.Seen, more: Record<string, Partial<T.Cause>> = {}): T.Diagnosis[] {
  // Headline first: the causes that block what the exit status stands for (postcopy-ram, unless --require says), then
  // the others, then notes; within each, the fixes this host takes before the upgrade paths.
  const headline = (c: T.Cause) => BLOCKS[c.blocks](s).some((cap) => s.required.includes(cap));
  const rank = ([, c]: [string, T.Cause]) =>
    c.blocks === "note" ? 4 : (headline(c) ? 0 : 2) + (c.upgrade?.(s) ? 1 : 0);
  const given = new Set<string>();
  const table: Record<string, T.Cause> = { ...CAUSES };
  // A row `more` shares an id with refines it: its gate also names the cause, its evidence follows, its fixes lead.
  for (const [id, c] of Object.entries(more)) {
    const base = table[id];
    const refined = base && {
      when: (s: T.Seen) => base.when(s) || c.when!(s),
      evidence: [...base.evidence, ...c.evidence!],
    };
    table[id] = base ? { ...base, ...refined, fix: [...c.fix!, ...base.fix] } : (c as T.Cause);
  }
  return Object.entries(table)
    .filter(([, c]) => c.when(s) && (c.blocks === "note" || BLOCKS[c.blocks](s).length > 0))
    .sort((x, y) => rank(x) - rank(y))
    .map(([cause, c]) => {
      const [summary, evidence, fix] = [lines([c.summary], s)[0], lines(c.evidence, s), lines(c.fix, s)];
      return {
        cause,
        summary,
        blocks: BLOCKS[c.blocks](s),
        evidence,
        fix: fix.filter((x) => !given.has(x) && given.add(x)),
      };
    });
}
