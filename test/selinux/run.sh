#!/bin/bash
# test/selinux/run.sh: test/selinux.test.ts on a real enforcing policy. Boots Debian's 6.12 kernel with SELinux
# (../shared/kernels: a kernel under $KERN_DIR, default /tmp/kern), loads test/selinux/policy.cil and runs the
# tests there (guest.sh), QEMU 7.2 and QEMU 10 (../shared/qemu10, in /srv/qemu10) in each of its domains, as
# root and as uid 65534. Exits with the tests' status. The suite's own run skips those tests: no SELinux here.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
secilc -o "$out/policy.bin" -f /dev/null test/selinux/policy.cil
KERNEL_ARGS="lsm=landlock,lockdown,yama,integrity,selinux,bpf" ../shared/kernels/boot.sh \
  "$(ls -d "${KERN_DIR:-/tmp/kern}"/6.12* | head -n 1)" --out "$out" --share /srv/qemu10 --timeout 1500 --mem 3072 \
  -- sh -c '../shared/kernels/selinux/setup.sh /mnt/out/policy.bin && test/selinux/guest.sh'
