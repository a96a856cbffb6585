/**
 * The declared types of each stage's record, and of the postcopy-probe/1 document. Types only: Bun erases every
 * `import type`, so no run ever loads this file. The stages, in the order data flows (probe.ts):
 *
 *   Facts      read-only host context, read once                  readFacts()   -> Facts
 *   Checks     QEMU's sequence, one row per check                  runChecks()   -> Check[], Learnt
 *   Judge      each consumer's capabilities on its route           judge()       -> Judged
 *   Diagnosis  the causes that hold, what they block, their fixes  diagnose()    -> Diagnosis[]
 *   Report     the document every renderer reads                   probe()       -> Report
 *
 * A context (--user, --pid) enters as a Context; a real judge (--qemu, --migrate) as a RealAnswer.
 *
 * ```ts
 * import type { Facts, Report } from "./types.ts";
 * ```
 */

/** A check's outcome: only `fail` changes the exit status. */
export type Status = "pass" | "warn" | "fail" | "skip";

/** One line of the report, with the per-check data the README documents. A check never prints or throws. */
export type Check = {
  id: string;
  title: string;
  status: Status;
  detail: string;
  errno?: string;
  hint?: string;
  /** uffd-open: what each route answered. */
  routes?: Answers;
  /** round-trip: each fault, served or not. */
  trips?: Record<string, TripResult>;
  /** The UFFD_FEATURE_* and UFFDIO_* names the kernel lacks for this check. */
  missing?: string[];
};
/** A check's name and title: what it is before it runs. */
export type Head = Pick<Check, "id" | "title">;

/** The three ways to a uffd: /dev/userfaultfd's USERFAULTFD_IOC_NEW, userfaultfd(2), and user-mode-only. */
export type Route = "device" | "syscall" | "user-mode-only";
/** What each way answered, "ok" or an errno name; "device-node" is the open() of the node alone. */
export type Answers = Record<Route | "device-node", string>;

/** Who gets a uffd, each on a route of its own (README: "Which route each consumer takes"). */
export type ConsumerName = "qemu<8.0" | "qemu>=8.0" | "criu" | "firecracker" | "cloud-hypervisor";
/** What each consumer can do with a uffd here. */
export type Capability =
  | "postcopy-ram"
  | "postcopy-hugetlbfs"
  | "postcopy-shmem"
  | "background-snapshot"
  | "postcopy-blocktime"
  | "postcopy-multifd"
  | "criu-lazy-pages"
  | "firecracker-uffd"
  | "cloud-hypervisor";

/** A real fault, served or not, and its time from thread start to join. */
export type TripResult = { ok: boolean; ns: number; detail: string };
/** What runs every 1024 faults of a long run (--bench's progress line, and a turn of the event loop). */
export type Progress = (done: number) => Promise<void>;
/**
 * A thread that faults and how its faults are served: `fn` is the libc function the thread runs on the area (strlen
 * reads in user mode, uname writes in kernel mode); `prepare` readies the area before it starts, `serve` answers the
 * fault in `msg`, `finish` judges the thread's return value and the area.
 */
export type Faulting<T> = { kind: "anon" | "hugetlb"; len: number; mode: bigint; fn: string; count: number } & {
  prepare?: (fd: number, area: number) => string | null;
  serve: (fd: number, msg: BigUint64Array) => string | null;
  finish: (ret: number, area: number, served: Float64Array) => T | string;
};

/** What the command line asks for; the checks and renderers read it. */
export type Options = {
  format: Format;
  /** The capabilities the exit status stands for. */
  require: Capability[];
  quiet: boolean;
  color: boolean;
  /** The guest's page size. */
  targetPageSize: number;
  /** How long any wait for a fault may take. */
  boundMs: number;
  /** Faults to serve in --bench; 0 when not benchmarking. */
  bench: number;
  /** --user: answer for this user, from a child with its ids. */
  user: string | null;
  /** --pid: answer for this running QEMU, from a child in its context. */
  pid: number | null;
  /** --qemu [PATH]: ask that QEMU too (true: look for one). */
  qemu: string | true | null;
  /** How long QEMU gets to answer before it is killed. */
  qemuMs: number;
  /** --migrate: a real postcopy migration between two QEMUs here, too. */
  migrate: boolean;
  migrateMiB: number;
  migrateMs: number;
  /** --parallel N: its multifd channels. */
  parallel: number;
  /** --output FILE: the report goes there, whole or not at all. */
  output: string | null;
  /** --context CONTEXT: answer for that SELinux context (selinux.ts). */
  context: string | null;
  /** --all: every QEMU running here too, each as --pid answers it (all.ts). */
  all: boolean;
};
export type Format = "human" | "json" | "prometheus";

/** Read-only host context: every field is read from the host; null when it could not be read. */
export type Facts = {
  kernel: string;
  /** /dev/userfaultfd as QEMU sees it when it is the userfaultfd device (--pid: resolved inside its root). */
  device: string | null;
  /** The errno the device's route answers without an open(): its resolution's, or ENODEV for what is not it. */
  deviceSays: number;
  arch: string;
  pageSize: number;
  hugePageSize: number | null;
  uid: number;
  user: string;
  /** Absent: no CONFIG_USERFAULTFD, or a kernel before 5.2. */
  unprivilegedUserfaultfd: number | null;
  capSysPtrace: boolean | null;
  noNewPrivs: boolean;
  /** 0 none, 1 strict, 2 filter. */
  seccomp: number | null;
  seccompFilters: number | null;
  uidMap: string | null;
  userNamespace: boolean | null;
  /** As `ls -l` shows it; null when there is no such node. */
  devnode: { mode: string; kind: string; uid: number; gid: number; owner: string; group: string } | null;
  /** The kernel has the device even when this /dev lacks it (a container). */
  miscMinor: number | null;
  selinux: "enforcing" | "permissive" | null;
  /** gVisor's Sentry, which has no userfaultfd. */
  gvisor: boolean;
  /** libvirt's qemu.conf: the user it runs QEMU as, and its device ACL when set. */
  libvirt: { user: string | null; deviceAcl: string[] | null } | null;
  /** The user QEMU runs as here: libvirt's setting, else a user named like QEMU's. */
  qemuUser: string | null;
  kvmGroup: boolean;
} & ProcessFacts;

/** What --pid takes from the process instead of the probe's own: its filters, namespace, capability, NoNewPrivs. */
export type ProcessFacts = {
  seccomp?: number | null;
  seccompFilters?: number | null;
  noNewPrivs?: boolean;
  uidMap?: string | null;
  userNamespace?: boolean | null;
  capSysPtrace?: boolean | null;
  /** Its seccomp filters' answer for each route, which comes before the kernel's (seccomp.ts). */
  filter?: FilterVerdict | null;
  /** The AppArmor profile it runs under, taken on to answer the routes (apparmor.ts). */
  apparmor?: Confinement | null;
  /** Its /dev is its own (a mount namespace or root of its own): a fix to the host's node misses it. */
  ownDev?: boolean;
  /** The SELinux contexts judged, where SELinux is enabled (selinux.ts): this run's, and QEMU's or the process's. */
  domains?: Domain[];
};

/** An SELinux context, judged on each route by the loaded policy through selinuxfs (selinux.ts). */
export type Domain = {
  /** Whose it is: "this run", "process 1234", "--context", "libvirt's QEMU", "a container runtime's QEMU". */
  whose: string;
  context: string;
  /** Whose answers its refusals join: none (this run's: the kernel gave them), every consumer's, or QEMU's. */
  scope: "self" | "all" | "qemu";
  /** The routes the policy refuses there, with the answer the call gets (EACCES; EPERM for CAP_SYS_PTRACE). */
  denied: Partial<Answers>;
  /** Each refusal as the kernel logs it: denied { create } scontext=… tcontext=… tclass=anon_inode. */
  says: string[];
  /** What it would refuse were it enforcing (a permissive domain, or permissive mode): nothing is refused now. */
  permissive: string[];
  /** The local policy rules (CIL) that allow exactly what it refuses. */
  rules: string[];
  /** The policy refuses it capability { sys_ptrace }, which only a QEMU's file capability would use here. */
  ptraceRefused?: boolean;
  /** Why the policy could not be asked for it: nothing is known of it then. */
  unknown?: string;
};

/** What the checks learn, in the order they learn it. */
export type Learnt = {
  /** uffd-open: each route's answer. */
  answers: Answers | null;
  /** The route the checks after uffd-open use: a kernel-mode uffd when there is one. */
  route: Route | null;
  /** uffd-api: the features the kernel offers. */
  features: bigint | null;
  /** qemu-route: the QEMU that will run, read only when it matters. */
  qemu: Qemu | null;
  /** qemu-route: the way the deciding QEMU takes, and whether only its file capability opens it. */
  qemuRoute: { route: Route; byFileCap: boolean } | null;
  /** round-trip: each fault, served or not. */
  trips: Record<string, TripResult>;
  /** The checks a limit of the probe's own process (EMFILE, ENOMEM, ...) kept from running. */
  limited: string[];
};

/** Why a capability could not be judged, and what would settle it. */
export type Unjudged = [why: string, settle: string];
/**
 * What a context makes of a capability, QEMU's or another consumer's, on the routes that consumer tries: why the run
 * cannot judge it, false when the context refuses it, else null.
 */
export type Judging = (forQemu: boolean, routes: Route[], cap: Capability) => Unjudged | false | null;
/** Each capability judged: yes or no, why for those the run could not judge, and postcopy-ram per QEMU generation. */
export type Judged = {
  ok: Record<Capability, boolean>;
  unknown: Partial<Record<Capability, Unjudged>>;
  /** postcopy-ram for the deciding QEMU, or null when the run could not judge it. */
  ram: boolean | null;
  undetermined: Capability[];
  generations: Record<"qemu<8.0" | "qemu>=8.0", boolean | null>;
};

/** What the diagnosis reads beyond the facts, and only when a cause needs it. */
export type Evidence = { sysctlSource: { file: string; value: string } | null };
/**
 * What the diagnosis sees: the facts and evidence, what each route answered, the checks, the capabilities that
 * failed, the deciding QEMU, and what the exit status stands for.
 */
export type Seen = {
  f: Facts & Evidence;
  a: Answers;
  checks: Check[];
  failing: Capability[];
  qemu: Qemu | null;
  required: Capability[];
};
/** A line of a cause's evidence or fixes: fixed text, or text made from what the diagnosis sees (null: none). */
export type Says = string | ((s: Seen) => string | string[] | null);
/**
 * A cause: the gate that names it, where it stands (what it can block: a row of probe.ts's BLOCKS), if it is an
 * upgrade path, what it says and what to run.
 */
export type Cause = {
  when: (s: Seen) => boolean;
  blocks: string;
  upgrade?: (s: Seen) => boolean;
  summary: Says;
  evidence: Says[];
  fix: Says[];
};
/** A cause as the report gives it. */
export type Diagnosis = { cause: string; summary: string; blocks: Capability[]; evidence: string[]; fix: string[] };

/** The QEMU that will run, as far as the probe could tell; `error` says what it could not. */
export type Qemu = {
  path: string | null;
  version: string | null;
  major?: number;
  /** Its binary carries cap_sys_ptrace (permitted and effective). */
  ptrace: boolean;
  /**
   * The file a fix may offer a file capability, by the path it resolves to: root owns it, no one else can write it,
   * it is the host's, and it is no `#!` script. Null when there is none.
   */
  grantable?: string | null;
  answer?: QemuAnswer;
  error?: string;
};
/** QEMU's own answer to migrate-set-capabilities postcopy-ram, and whether (and why not) it agrees with the probe. */
export type QemuAnswer = {
  path: string;
  version: string;
  accepts: boolean;
  message: string;
  /**
   * Its answer to multifd beside postcopy-ram (null when it refused postcopy-ram, so it was not asked); `accepts` is
   * null when it gave none within the bound.
   */
  multifd: { accepts: boolean | null; message: string } | null;
  agrees?: boolean;
  why?: string;
};
/** What --migrate's migration showed: `ok` null when it could not tell (it could not start, or proved nothing). */
export type Migration = {
  ok: boolean | null;
  /** Where it ended when it was not a completed postcopy migration, in QEMU's own words where it gave any. */
  why?: string;
  qemu: string;
  accel: "kvm" | "tcg";
  ramMiB: number;
  /** multifd channels (--parallel), 0 without multifd. */
  parallel: number;
  /** The source's statuses, in the order it went through them. */
  statuses: string[];
  totalMs: number | null;
  downtimeMs: number | null;
  /** Pages the destination requested from the source (ram.postcopy-requests). */
  pagesRequested: number | null;
  blocktimeMs: number | null;
  vcpuBlocktimeMs: number[] | null;
};
/**
 * A real judge beside the probe, --qemu's (QEMU's own answer) or --migrate's (a migration): what will happen decides
 * the capabilities it answers.
 */
export type RealAnswer = {
  /** How the verdict line names it: "QEMU 7.2.22's own answer". */
  whose: string;
  check: Check;
  /** The capabilities it answers: yes, no, or null when it could not tell. */
  decides: Partial<Record<Capability, boolean | null>>;
  /** Why it could not tell, and what would settle it (the run is then exit 2). */
  unanswered?: Unjudged;
  /** What it adds to the document. */
  json: { qemu?: QemuAnswer; migration?: Migration };
};
/** --bench's figures, or what stopped it. */
export type Bench =
  | {
      faults: number;
      pageSize: number;
      route: Route;
      p50Ns: number;
      p99Ns: number;
      pagesPerSec: number;
      bytesPerSec: number;
    }
  | { error: string };

/** One classic-BPF instruction: struct sock_filter { __u16 code; __u8 jt, jf; __u32 k; }. */
export type Insn = { code: number; jt: number; jf: number; k: number };
/** What a process's seccomp filters answer on each route to a uffd: the answer a route gets instead of the kernel's. */
export type FilterVerdict = {
  /** A route a filter refuses, with the answer QEMU gets: the errno, or SIGSYS for a filter that kills or traps. */
  answers: Partial<Answers>;
  /** Each refused or undecided route: "userfaultfd(O_CLOEXEC): SECCOMP_RET_ERRNO(EPERM), filter 1 of 1" */
  says: Partial<Record<Route | "device-node", string>>;
  /** The refused routes that QEMU's host check passes: they fail only when postcopy starts, after precopy. */
  late: Route[];
  /** Routes no filter can decide ahead: a supervisor (USER_NOTIF) or a tracer (TRACE) answers. */
  undecided: Route[];
  /** The rule a Docker-format profile needs for what the filters refused: those calls, allowed. */
  fix: string;
};
/** The AppArmor profile a process runs under, and what the kernel answered the routes under it. */
export type Confinement = {
  profile: string;
  /** The routes the profile changed the kernel's answer on, with the answer under the profile. */
  denied: Partial<Answers>;
  /** CAP_SYS_PTRACE under the profile, tried when this run had it: "allowed", "denied", else unknown. */
  ptrace: "allowed" | "denied" | null;
};

/**
 * Whose context the answer is for (--user, --pid), and what that context adds to the core's stages: the facts that
 * are the process's, its own checks, causes and judgements, and what it could not read.
 */
export type Context = {
  name: string;
  uid: number;
  gid: number;
  groups: number[];
  /** /dev/userfaultfd as that process sees it, resolved inside its root before the switch; else the errno. */
  device?: string | number;
  qemu?: Qemu;
  /** --pid: the facts that are the process's, not the child's. */
  facts?: ProcessFacts;
  /** --pid: the process's own context and its VM's configuration, as checks. */
  checks?: Check[];
  /** The checks postcopy-ram needs passed for this VM beyond QEMU's own (its RAM on huge pages: register-hugetlb). */
  requires?: string[];
  /** --pid: the causes only a running process can have, and the core's rows it refines (by their id). */
  causes?: Record<string, Partial<Cause>>;
  /** What this context makes of the judged capabilities: one it kept for QEMU, a filter's supervisor, the VM. */
  judging?: Judging[];
  /** --pid: what the probe could not read of the process, each with what would settle it (exit 2). */
  unanswered?: Unjudged[];
  /** --pid: what the report shows of the process (JSON `context`). */
  shown?: Record<string, unknown>;
  /** CAP_SYS_PTRACE kept for QEMU's sake (its file capability, or the process's): not CRIU's or Firecracker's. */
  ptrace?: boolean;
  /** --pid: what --migrate's copy of the VM takes on: its filters, RAM, sandbox, NoNewPrivs. */
  copy?: {
    pid: number;
    exe: string | null;
    filters?: Insn[][];
    ram: { memPath: string | null; shared: boolean; dir?: number | null };
    sandbox: string[];
    noNewPrivs: boolean;
  };
};

/** --all: one process that looked like a QEMU, answered as --pid answers it. */
export type VmAnswer = {
  /** Its -name (guest=NAME), as libvirt names the domain (KubeVirt: NAMESPACE_NAME); else "pid N". */
  name: string;
  pid: number;
  user: string | null;
  /** The version of the QEMU it runs, when read. */
  qemu: string | null;
  /** "not a qemu": --pid found no QEMU there (another program, gone since): left out of the answer. */
  answer: "supported" | "not supported" | "unknown" | "not a qemu";
  /** The first cause of a no; why it could not be answered; what it was instead of a QEMU. */
  why?: string;
  cause?: string;
  /** Its whole --pid document, when one came. */
  report?: Report;
};

/** The postcopy-probe/1 document (--json), which every renderer reads. postcopy-probe-1.schema.json says it too. */
export type Report = {
  schema: "postcopy-probe/1";
  version: string;
  /** The headline: a real judge's answer if any, else the probe's for the QEMU that will run; null: UNKNOWN. */
  postcopy: boolean | null;
  /** The real judge whose answer the headline is, when it is not the probe's own. */
  answeredBy?: string;
  /** The probe's own answer, for which QEMU, on which route, and for QEMU before and after 8.0. */
  probe: {
    postcopy: boolean | null;
    qemu: string;
    consumer: ConsumerName;
    route: Route | null;
    "qemu<8.0": boolean | null;
    "qemu>=8.0": boolean | null;
  };
  host: Facts & Evidence;
  checks: Check[];
  features: Record<string, boolean | string>;
  capabilities: Record<Capability, boolean>;
  /** Capabilities the run could not judge. */
  undetermined: Capability[];
  diagnosis: Diagnosis[];
  /** What the exit status stands for: --require's capabilities, postcopy-ram by default. */
  required: { capabilities: Capability[]; ok: boolean | null };
  /** The kernel-mode write trip decides for QEMU: its result and time, when it ran. */
  roundTrip?: { ok: boolean; ns: number };
  qemu?: QemuAnswer;
  migration?: Migration;
  /** --pid: the running process read. */
  context?: Record<string, unknown>;
  bench?: Bench;
  /** --all: every QEMU running here, each answered as --pid answers it. */
  vms?: VmAnswer[];
  /** Set when the probe could not answer what was asked: the exit status is then 2. */
  error?: string;
  /** With `error`: what would settle each thing the run could not answer. */
  settle?: string[];
  /** With `error`: --pid's process is no QEMU (another program, a kernel thread, the probe itself). */
  notQemu?: boolean;
};
