#!/bin/sh
# udhcpc event script of the default guest: applies a DHCP lease (address, default route, DNS)
# to $interface. Called by busybox udhcpc with the event name as $1 and the lease in the environment.

case $1 in
  deconfig)
    ip -4 addr flush dev "$interface" 2>/dev/null
    ip link set "$interface" up 2>/dev/null
    ;;
  bound | renew)
    ip -4 addr flush dev "$interface" 2>/dev/null
    ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    # A restricted user-mode network (egress none) offers no router: the DHCP server is the
    # gateway, so a child forked from such a parent onto an egress nat network still has a route.
    [ -n "$router" ] || router=$serverid
    for r in $router; do
      ip route replace default via "$r" dev "$interface"
      break
    done
    : >/etc/resolv.conf
    [ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
    ;;
esac
exit 0
