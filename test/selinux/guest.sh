#!/bin/sh
# test/selinux/guest.sh: run by run.sh in the booted guest, as root, once setup.sh loaded the policy and turned
# enforcing on. QEMU's user may use the device and the syscall as far as the mode and the sysctl go, so that
# SELinux alone decides; /etc/selinux (the host's, read-only) gets a config of its own, which libselinux's
# runcon needs. Then the SELinux tests, which know they may load policies here.
set -eu
sysctl -qw vm.unprivileged_userfaultfd=1
chmod 0666 /dev/userfaultfd
mount -t tmpfs none /etc/selinux
printf 'SELINUX=enforcing\nSELINUXTYPE=test\n' >/etc/selinux/config
cp /mnt/out/policy.bin /tmp/policy.bin
export POSTCOPY_PROBE_SELINUX_GUEST=/tmp/policy.bin BUN_RUNTIME_TRANSPILER_CACHE_PATH=0
exec node_modules/.bin/bun test --timeout 600000 test/selinux.test.ts
