#!/usr/bin/python3
"""seccomp-run.py PROFILE.json CAPS COMMAND...: load a Docker-format seccomp profile as a container
runtime does (rules whose includes/excludes match CAPS, a comma-separated list such as CAP_CHOWN, and
this architecture), then execute COMMAND under it. Needs libseccomp's Python binding (python3-seccomp)."""
import json
import os
import sys

import seccomp

profile_path, caps, argv = sys.argv[1], set(filter(None, sys.argv[2].split(","))), sys.argv[3:]
profile = json.load(open(profile_path))
ARCH = "amd64"  # the tests run on x86_64
KERNEL = tuple(int(n) for n in os.uname().release.split("-")[0].split(".")[:2])
OPS = {
    "SCMP_CMP_EQ": seccomp.EQ, "SCMP_CMP_NE": seccomp.NE, "SCMP_CMP_LT": seccomp.LT, "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_GT": seccomp.GT, "SCMP_CMP_GE": seccomp.GE, "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}


def action(name, errno):
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(errno if errno is not None else profile.get("defaultErrnoRet", 1))
    if name == "SCMP_ACT_TRACE":
        return seccomp.TRACE(errno or 0)
    return {"SCMP_ACT_ALLOW": seccomp.ALLOW, "SCMP_ACT_LOG": seccomp.LOG, "SCMP_ACT_TRAP": seccomp.TRAP,
            "SCMP_ACT_KILL": seccomp.KILL, "SCMP_ACT_KILL_THREAD": seccomp.KILL,
            "SCMP_ACT_KILL_PROCESS": seccomp.KILL_PROCESS, "SCMP_ACT_NOTIFY": seccomp.NOTIFY}[name]


def applies(rule):
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    if inc.get("arches") and ARCH not in inc["arches"]:
        return False
    if exc.get("arches") and ARCH in exc["arches"]:
        return False
    if inc.get("minKernel") and KERNEL < tuple(int(n) for n in inc["minKernel"].split(".")):
        return False
    return True


default = action(profile["defaultAction"], profile.get("defaultErrnoRet"))
f = seccomp.SyscallFilter(defaction=default)
for rule in filter(applies, profile["syscalls"]):
    act = action(rule["action"], rule.get("errnoRet"))
    args = [seccomp.Arg(a["index"], OPS[a["op"]], a["value"], a.get("valueTwo", 0)) for a in rule.get("args") or []]
    for name in rule["names"]:
        try:
            f.add_rule(act, name, *args)
        except (RuntimeError, ValueError, OSError):
            pass  # a call this libseccomp does not know, or one that is the default action already
f.load()
os.execv(argv[0], argv)
