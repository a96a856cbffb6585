/**
 * A worker thread of the --pid child that answers the routes to a uffd as the process's AppArmor profile
 * lets them through. AppArmor labels a thread, not a process: this thread answers the routes, takes on
 * the profile (AppArmor's change_profile, through /proc/thread-self/attr/apparmor/current, or
 * .../attr/current before 5.8) and answers them again, while the rest of the child stays as it was, free
 * to read the host's files and write the report. It is also where CAP_SYS_PTRACE meets the profile.
 * context.ts starts it only for --pid of a process under a profile that is not "unconfined".
 *
 * The message in: `{ profile, device, deviceSays }`; out: `{ before, after, ptrace }` or `{ error }`.
 */
import * as K from "./ffi.ts";
import { CAP_SYS_PTRACE, capBit, field, routeAnswers } from "./shared.ts";
import type { Answers } from "./types.ts";

/** What the worker answers: the routes unconfined and confined, and how userfaultfd(2) met the profile. */
export type Confined = { before: Answers; after: Answers; ptrace: "allowed" | "denied" | null } | { error: string };

/** The files AppArmor's change_profile is written to, this thread's own, newest interface first. */
const ATTR = ["/proc/thread-self/attr/apparmor/current", "/proc/thread-self/attr/current"];

/** Takes on `profile` for this thread; ret 0, or the errno that refused it (ENOENT: not loaded). */
function changeProfile(sys: K.Sys, profile: string): K.R {
  for (const at of ATTR) {
    const fd = sys.open(at, K.O_WRONLY | K.O_CLOEXEC);
    if (fd.ret < 0) continue;
    const written = sys.write(fd.ret, `changeprofile ${profile}`);
    sys.close(fd.ret);
    return written.ret < 0 ? written : { ret: 0, errno: 0 };
  }
  return { ret: -1, errno: K.errnoOf("ENOENT") };
}

declare const self: Worker;
self.onmessage = ({ data }: MessageEvent<{ profile: string; device: string | null; deviceSays: number }>) => {
  const sys = K.loadSys();
  const before = routeAnswers(sys, data);
  const changed = changeProfile(sys, data.profile);
  if (changed.ret < 0) {
    postMessage({ error: `AppArmor refused to take on ${data.profile}: ${K.errnoName(changed.errno)}` });
    return;
  }
  const after = routeAnswers(sys, data);
  // userfaultfd(2) asks for CAP_SYS_PTRACE before the sysctl: what it answers under the profile, when
  // it was let through before, says whether the profile allows the capability this thread holds.
  const held = capBit(field(sys.readText("/proc/thread-self/status"), "CapEff"), CAP_SYS_PTRACE);
  const ptrace = held && before.syscall === "ok" ? (after.syscall === "ok" ? "allowed" : "denied") : null;
  postMessage({ before, after, ptrace } satisfies Confined);
};
