#!/bin/sh
# forkvm guest agent: answers one-line requests on a virtio-serial port. POSIX sh, needs only
# busybox or coreutils + awk (base64, dd, timeout, date, ip). Usage: agent.sh /dev/vportNpM
# The wire protocol (requests, replies, ids, sizes, EOF, versioning) is written down once, in
# engine/guest/PROTOCOL.md; the host's side is engine/guest/protocol.ts. Keep all three in step.
# The agent never exits: EOF or errors re-open the port.

AGENT_VERSION=1 # PROTOCOL.md, "Versioning"
port=$1
PATH=${PATH:-/usr/sbin:/usr/bin:/sbin:/bin}
HOME=${HOME:-/root}
export PATH HOME
set -f # words of a request are never pathname-expanded
umask 022 # what commands run by exec inherit; the work directory itself is 0700 (mktemp)

log() { echo "forkvm-agent: $*" >&2; }

# A private work directory on tmpfs for requests, stdin, stdout, stderr and the reply being
# composed. Only one agent runs at a time (the port opens once), so earlier ones are litter,
# and a reader left behind by an agent that was killed would keep the port busy.
pidfile=/tmp/forkvm-agent.reader.pid
old=$(cat "$pidfile" 2>/dev/null)
# (Only if that pid still reads our port: pids get reused.)
[ -n "$old" ] && [ "$(readlink "/proc/$old/fd/0" 2>/dev/null)" = "$port" ] && kill "$old" 2>/dev/null
set +f
rm -rf /tmp/forkvm-agent.?????? 2>/dev/null
set -f
work=
while [ -z "$work" ]; do
  work=$(mktemp -d /tmp/forkvm-agent.XXXXXX 2>/dev/null || mktemp -d /run/forkvm-agent.XXXXXX 2>/dev/null)
  [ -n "$work" ] || { log "cannot create a work directory"; sleep 1; }
done

# Decodes short base64 text (a hostname) into $b64esc, a printf format of octal escapes, with
# shell builtins only (no fork; a forked base64 costs a fresh child ~40 ms more under TCG).
B64ALPHABET=ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/
b64text() {
  _in=$1 _acc=0 _bits=0 b64esc=
  while [ -n "$_in" ]; do
    _c=${_in%"${_in#?}"}
    _in=${_in#?}
    [ "$_c" = = ] && break
    _p=${B64ALPHABET%%"$_c"*}
    _acc=$(((_acc << 6 | ${#_p}) & 65535))
    _bits=$((_bits + 6))
    if [ $_bits -ge 8 ]; then
      _bits=$((_bits - 8))
      _b=$(((_acc >> _bits) & 255))
      b64esc="$b64esc\\$((_b >> 6))$(((_b >> 3) & 7))$((_b & 7))"
    fi
  done
}
is_b64() { case $1 in -) return 0 ;; '' | *[!A-Za-z0-9+/=]*) return 1 ;; esac; return 0; }
unb64() { [ "$1" = - ] || printf '%s' "$1" | base64 -d; }
# File contents as base64 on one line, "-" when empty.
b64file() { if [ -s "$1" ]; then base64 -w 0 <"$1"; else printf %s -; fi; }
b64str() { if [ -n "$1" ]; then printf %s "$1" | base64 -w 0; else printf %s -; fi; }

# Sends $work/resp (one complete line) in as few writes as dd can: one block of up to 4 MiB,
# more for a longer line (the kernel may still split it into 32 KiB virtio buffers, which the
# host reassembles). The host caps reply lines (PROTOCOL.md, "Size limits").
send() {
  size=$(wc -c <"$work/resp")
  size=$((size + 0))
  [ "$size" -le 4194304 ] || size=4194304
  dd if="$work/resp" bs="$size" 2>/dev/null >&3 || log "cannot write reply $id"
}
# Every reply starts with a newline too: it ends any line a killed writer left unfinished.
# A short reply is one printf builtin straight to the port (one write; no wc, no dd: under TCG
# every fork in a fresh child costs milliseconds of cold translation).
reply_ok() { printf '\n%s ok%s\n' "$id" "${1:+ $1}" >&3 || log "cannot write reply $id"; }
reply_err() { printf '\n%s err %s\n' "$id" "$(b64str "$1")" >"$work/resp" && send; }

# exec <timeoutSec> <b64 stdin|-> <b64 argv0> [<b64 argv>...]
do_exec() {
  if [ $# -lt 3 ]; then reply_err "Cannot run exec: expected <timeout> <stdin> <argv0> [args], got $# words"; return; fi
  t=$1
  in=$2
  shift 2
  case $t in '' | *[!0-9]*) reply_err "Cannot run exec: timeout '$t' is not a number of seconds"; return ;; esac
  for a in "$@"; do
    is_b64 "$a" || { reply_err "Cannot run exec: an argument is not base64"; return; }
  done
  [ "$in" = @ ] || is_b64 "$in" || { reply_err "Cannot run exec: stdin is not base64"; return; }
  inf=/dev/null
  if [ "$in" = @ ] && [ -f "$reqfile.in" ]; then
    # A large stdin: the reader set it aside, so the shell never holds it in a variable.
    inf=$work/in
    base64 -d <"$reqfile.in" >"$inf" 2>/dev/null || { reply_err "Cannot decode exec stdin: invalid base64"; return; }
  elif [ "$in" != - ]; then
    inf=$work/in
    unb64 "$in" >"$inf" 2>/dev/null || { reply_err "Cannot decode exec stdin: invalid base64"; return; }
  fi
  # Decode every argument in place: rotate through the positional parameters, so the argv is
  # passed exactly (no word splitting, no globbing, trailing newlines kept). A short argument is
  # decoded by builtins into $'\NNN...' (only octal escapes inside, so eval sees no other
  # syntax); a long one by base64, the "." guarding its trailing newlines.
  n=$#
  while [ "$n" -gt 0 ]; do
    if [ "$1" = - ]; then
      v=
    elif [ ${#1} -le 1024 ]; then
      b64text "$1"
      eval "v=\$'$b64esc'"
    else
      v=$(unb64 "$1" && echo .) || { reply_err "Cannot decode exec argv: invalid base64"; return; }
      v=${v%.}
    fi
    shift
    set -- "$@" "$v"
    n=$((n - 1))
  done
  # `exec` in a subshell: never a shell function or builtin of the agent itself (e.g. "exit").
  # (The outer 2>/dev/null only silences the shell's own "Terminated" notice.)
  {
    (
      cd / || :
      if [ "$t" -gt 0 ]; then exec timeout "$t" "$@"; else exec "$@"; fi
    ) <"$inf" >"$work/out" 2>"$work/err" 3<&- 3>&- 4<&-
    rc=$?
  } 2>/dev/null
  if [ -s "$work/out" ] || [ -s "$work/err" ]; then
    { printf '\n%s ok %s ' "$id" "$rc" && b64file "$work/out" && printf ' ' && b64file "$work/err" && printf '\n'; } >"$work/resp" &&
      send
  else
    printf '\n%s ok %s - -\n' "$id" "$rc" >&3 || log "cannot write reply $id"
  fi
  # Truncated, not removed: `rm` would be one more fork; the next exec overwrites them anyway.
  : >"$work/out"
  : >"$work/err"
  [ "$inf" = "$work/in" ] && : >"$work/in"
}

# identity <b64 hostname|-> <mac|-> <epochSeconds|-> <b64 seed|-> <machineId|->
do_identity() {
  if [ $# -ne 5 ]; then reply_err "Cannot set identity: expected 5 arguments, got $#"; return; fi
  for a in "$1" "$4"; do
    is_b64 "$a" || { reply_err "Cannot set identity: an argument is not base64"; return; }
  done

  if [ "$1" != - ]; then
    b64text "$1"
    { printf "$b64esc" >/proc/sys/kernel/hostname; } 2>/dev/null || { reply_err "Cannot set hostname"; return; }
    if [ -e /etc/hostname ] || [ -w /etc ]; then
      printf "$b64esc\\n" >/etc/hostname 2>/dev/null || { reply_err "Cannot write /etc/hostname"; return; }
    fi
  fi

  mac=$2
  if [ "$mac" != - ] && [ -e /sys/class/net/eth0 ]; then
    x='[0-9a-fA-F][0-9a-fA-F]'
    case $mac in $x:$x:$x:$x:$x:$x) ;; *) reply_err "Cannot set MAC address: '$mac' is not a MAC address"; return ;; esac
    old=
    read -r old </sys/class/net/eth0/address 2>/dev/null
    if [ "$old" != "$mac" ]; then
      # Change the MAC live (virtio-net allows it): the address and routes stay, and the kernel
      # announces the new MAC with a gratuitous ARP (arp_notify), so the network backend (passt
      # learns the guest's MAC only from its frames) sends the guest's IP (the target of host
      # port forwards) to the new MAC. No DHCP renewal: with a new MAC it would hand out a
      # different address than the one the forwards point at.
      echo 1 >/proc/sys/net/ipv4/conf/eth0/arp_notify 2>/dev/null
      if ! ip link set dev eth0 address "$mac" 2>/dev/null; then
        # A driver without live changes: down, change, up, then put address and route back.
        addr=
        gw=
        prev=
        for w in $(ip -4 addr show dev eth0 2>/dev/null); do
          [ "$prev" = inet ] && [ -z "$addr" ] && addr=$w
          prev=$w
        done
        prev=
        for w in $(ip route show 2>/dev/null | grep '^default'); do
          [ "$prev" = via ] && [ -z "$gw" ] && gw=$w
          prev=$w
        done
        out=$({ ip link set eth0 down && ip link set dev eth0 address "$mac" && ip link set eth0 up; } 2>&1) ||
          { reply_err "Cannot set MAC address: $out"; return; }
        [ -n "$addr" ] && ip addr replace "$addr" dev eth0 2>/dev/null
        [ -n "$gw" ] && ip route replace default via "$gw" dev eth0 2>/dev/null
      fi
    fi
  fi

  if [ "$3" != - ]; then
    case $3 in '' | *[!0-9]*) reply_err "Cannot set clock: '$3' is not a number of seconds"; return ;; esac
    date -s "@$3" >/dev/null 2>"$work/err" || { reply_err "Cannot set clock: $(cat "$work/err")"; return; }
  fi

  if [ "$4" != - ]; then
    # The seed's base64 text carries all of its entropy: no decoding (no base64 process) needed.
    printf %s "$4" >/dev/urandom 2>/dev/null || { reply_err "Cannot reseed /dev/urandom"; return; }
  fi

  if [ "$5" != - ] && [ -f /etc/machine-id ]; then
    case $5 in *[!0-9a-f]*) reply_err "Cannot set machine id: '$5' is not lowercase hex"; return ;; esac
    [ ${#5} -eq 32 ] || { reply_err "Cannot set machine id: '$5' is not 32 hex digits"; return; }
    echo "$5" >/etc/machine-id 2>/dev/null || { reply_err "Cannot write /etc/machine-id"; return; }
  fi
  reply_ok
}

handle() {
  # shellcheck disable=SC2086 # splitting the request into words is the point
  set -- $1
  [ $# -gt 0 ] || return 0 # blank lines separate requests
  id=$1
  case $id in '' | *[!A-Za-z0-9_-]*) log "ignoring a request without a valid id"; return ;; esac
  if [ $# -lt 2 ]; then reply_err "Cannot parse request: no operation"; return; fi
  op=$2
  shift 2
  case $op in
    ping) reply_ok "pong $AGENT_VERSION" ;;
    exec) do_exec "$@" ;;
    identity) do_identity "$@" ;;
    *) reply_err "Cannot run $op: unknown operation" ;;
  esac
}

# The reader: awk splits the byte stream of the port (fd 3) into one file per request line and
# names each file on the queue FIFO, in order. Buffered, so a 1 MiB request costs what its size
# costs; the shell's `read` would make one system call per byte. It blocks in read() when idle.
# The stdin of a large exec goes to a file of its own (the word becomes "@"), so the shell never
# splits or copies it. mawk waits to fill whole blocks unless told -W interactive.
awk_opts=
case $(awk -W version 2>&1 </dev/null) in *mawk*) awk_opts="-W interactive" ;; esac
start_reader() {
  set +f
  rm -f "$work/queue" "$work"/req.*
  set -f
  mkfifo "$work/queue" || return 1
  # shellcheck disable=SC2086
  awk $awk_opts -v d="$work" \
    'length($0) {
      f = d "/req." NR
      if ($2 == "exec" && length($4) > 4096) { printf "%s", $4 > (f ".in"); close(f ".in"); $4 = "@" }
      if (length($0) <= 4096) print "L " f " " $0
      else { printf "%s\n", $0 > f; close(f); print "F " f }
      fflush()
    }' <&3 >"$work/queue" 2>/dev/null &
  reader=$!
  echo "$reader" >"$pidfile"
  exec 4<"$work/queue" # returns once awk has its end open; EOF when awk ends
}

if [ -z "$port" ]; then log "usage: agent.sh /dev/vportNpM"; fi
while :; do
  # `command exec` so a failed open returns an error instead of ending the shell.
  if [ -n "$port" ] && { command exec 3<>"$port"; } 2>/dev/null; then
    if start_reader; then
      echo "forkvm: agent ready" >&2
      # "L <file> <request>": a short request travels in the queue itself, read by the shell's
      # builtin (no cat, no rm: no fork). "F <file>": a long one was written to <file>.
      while IFS=' ' read -r kind f line <&4; do
        reqfile=$f
        if [ "$kind" = F ]; then
          line=$(cat "$f" 2>/dev/null)
          rm -f "$f"
        fi
        handle "$line"
        [ -e "$f.in" ] && rm -f "$f.in"
      done
      kill "$reader" 2>/dev/null
      exec 4<&-
    else
      log "cannot create the request queue in $work"
    fi
    exec 3<&- 3>&-
  fi
  sleep 1
done
