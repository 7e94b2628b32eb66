#!/bin/bash
# Boot one test host. Runs as PID 1 of a new PID namespace, inside new mount + UTS namespaces, joined
# to the host's network namespace (see hosts.py: nsenter --net=... unshare --mount --uts --pid --fork).
# Inputs (environment): H_NAME, H_DIR (private tmpfs mount point), H_SEED (tree copied over the root),
# H_TMPFS_SIZE, H_USER (login user to create, may be empty), H_PW_HASH (its password hash or '*').
set -eu
D=$H_DIR
mount -t tmpfs -o "size=${H_TMPFS_SIZE:-2g},mode=755" "harness-$H_NAME" "$D"   # upper in RAM
mkdir -p "$D/upper" "$D/work" "$D/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$D/upper,workdir=$D/work" "$D/root"
R=$D/root
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"          # this PID namespace's processes only
mount -t sysfs sysfs "$R/sys"         # this network namespace's interfaces
mount -t tmpfs -o mode=755 run "$R/run"
mount -t tmpfs -o mode=1777 tmp "$R/tmp"
# per-host files (hostname, hosts, os-release, sshd config and keys, sudoers): prepared by hosts.py
cp -a --remove-destination "$H_SEED/." "$R/"
hostname "$H_NAME"
cd "$R"
mkdir -p .oldroot
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot
if [ -n "${H_USER:-}" ]; then
  useradd -m -s /bin/bash "$H_USER"
  usermod -p "$H_PW_HASH" "$H_USER"                   # '*' = key only, but not "locked"
  install -d -m 700 -o "$H_USER" -g "$H_USER" "/home/$H_USER/.ssh"
  install -m 600 -o "$H_USER" -g "$H_USER" /etc/harness/authorized_keys "/home/$H_USER/.ssh/authorized_keys"
fi
mkdir -p /run/sshd
/usr/sbin/sshd -t -f /etc/ssh/sshd_config.harness
/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config.harness &
echo "harness: $H_NAME booted, sshd pid-in-ns $!"
# stay PID 1 (reaps orphans) even when a test kills sshd
while :; do
  sleep 3600 &
  wait $! || true
done
