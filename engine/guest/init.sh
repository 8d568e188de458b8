#!/bin/busybox sh
# PID 1 of the default forkvm guest (busybox initramfs): mounts, modules, network, data disk,
# a console shell on ttyS0, then the agent on the org.forkvm.agent virtio-serial port, forever.
# PID 1 must never exit (the kernel panics): every step is guarded and nothing here uses `exit`.

BB=/bin/busybox
PATH=/sbin:/usr/sbin:/bin:/usr/bin
HOME=/root
export PATH HOME

# Signals with the default action are never delivered to PID 1, so no traps are needed (and
# ignoring signals here would make every child immune to them too: SIG_IGN survives exec).

$BB mkdir -p /proc /sys /dev /tmp /run /data /root /sbin /usr/bin /usr/sbin /etc
$BB mount -t proc proc /proc 2>/dev/null
$BB mount -t sysfs sysfs /sys 2>/dev/null
$BB mount -t devtmpfs devtmpfs /dev 2>/dev/null
$BB mkdir -p /dev/pts /dev/shm
$BB mount -t devpts devpts /dev/pts 2>/dev/null
$BB mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp 2>/dev/null
$BB mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run 2>/dev/null
$BB mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm 2>/dev/null
$BB --install -s 2>/dev/null

say() { echo "forkvm: $*" >/dev/console 2>/dev/null; }
# With forkvm.debug=1: "forkvm: <uptime> <phase>" lines, to see where boot time goes.
mark() { [ "$debug" = 1 ] && say "$(cut -d' ' -f1 /proc/uptime) $*"; }

# Kernel parameters of our own: forkvm.hostname=NAME, forkvm.mkfs=1, forkvm.debug=1.
hostname=forkvm
mkfs=0
debug=0
for word in $(cat /proc/cmdline 2>/dev/null); do
  case $word in
    forkvm.hostname=?*) hostname=${word#forkvm.hostname=} ;;
    forkvm.mkfs=1) mkfs=1 ;;
    forkvm.debug=1) debug=1 ;;
  esac
done
mark "mounted, applets installed"

# Modules, in dependency order (written by the image builder, one absolute path a line).
if [ -r /etc/forkvm/modules ]; then
  while IFS= read -r mod; do
    [ -n "$mod" ] || continue
    insmod "$mod" 2>/dev/null || say "cannot load module $mod"
  done </etc/forkvm/modules
fi
mark "modules loaded"

# Identity: hostname and a random machine id (the agent's identity op changes both).
hostname "$hostname" 2>/dev/null
echo "$hostname" >/etc/hostname
# (Not /dev/urandom: this early it stalls ~1 s under TCG until the kernel's RNG is initialised.)
id=$(tr -d -- '-\n' </proc/sys/kernel/random/uuid 2>/dev/null)
[ ${#id} -eq 32 ] && echo "$id" >/etc/machine-id
printf '127.0.0.1\tlocalhost\n' >/etc/hosts

mark "identity set"

# Network: loopback, then eth0 by DHCP (QEMU user networking answers at once). No NIC: no wait.
ip link set lo up 2>/dev/null
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up 2>/dev/null
  udhcpc -i eth0 -s /forkvm/udhcpc.sh -q -n -t 3 -T 1 >/dev/null 2>&1 || say "no DHCP lease on eth0"
fi

mark "network up"

# Data disk: /dev/vda on /data; made ext2 (mounted by the ext4 driver) only when asked and blank.
has_ext_magic() { [ "$(dd if="$1" bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 53ef ]; }
is_blank() { [ -z "$(dd if="$1" bs=65536 count=1 2>/dev/null | tr -d '\000' | head -c 1)" ]; }
if [ -b /dev/vda ]; then
  if [ "$mkfs" = 1 ] && ! has_ext_magic /dev/vda && is_blank /dev/vda; then
    mke2fs -q -F /dev/vda >/dev/null 2>&1 || say "cannot make a filesystem on /dev/vda"
  fi
  # No background work on the filesystem later (inode table zeroing, block bitmap prefetch): it
  # starts at a random point up to 5 s after the mount, so a template taken before that made every
  # forked child do it (measured ~60 ms of host CPU per child). Older kernels lack the options.
  mount -t ext4 -o noinit_itable,no_prefetch_block_bitmaps /dev/vda /data 2>/dev/null ||
    mount -t ext4 /dev/vda /data 2>/dev/null || say "cannot mount /dev/vda on /data"
fi

mark "data disk done"

# A root shell on the serial console, respawned when it exits.
(
  while :; do
    setsid cttyhack sh -l </dev/console >/dev/console 2>&1
    sleep 1
  done
) &

# The agent port: the virtio-serial port named org.forkvm.agent (/dev/vportNpM).
find_port() {
  for f in /sys/class/virtio-ports/*/name; do
    [ -r "$f" ] || continue
    if [ "$(cat "$f" 2>/dev/null)" = org.forkvm.agent ]; then
      d=${f%/name}
      echo "/dev/${d##*/}"
      return 0
    fi
  done
  return 1
}

# The agent loop: PID 1 blocks in wait here (reaping orphans meanwhile) and restarts the agent
# whenever it ends. Back off while there is no port, so a guest without one stays quiet.
pause=1
while :; do
  port=$(find_port)
  if [ -n "$port" ] && [ -c "$port" ]; then
    pause=1
    $BB sh /forkvm/agent.sh "$port" </dev/null >/dev/console 2>&1
    sleep 1
  else
    sleep $pause
    [ $pause -lt 30 ] && pause=$((pause * 2))
  fi
done
