#!/bin/sh
# Init of a shardbus microVM holder: the first and only script the guest runs.
#
# It mounts the host's folders that the backend shares read-only over 9p,
# makes the broker reachable, runs `python -m holders` and powers the VM
# off when the holder exits. Every setting comes from the kernel command
# line (shardbus.* words, written by provisioner/microvm.py):
#
#   shardbus.share=TAG:PATH        mount the 9p share TAG at PATH (repeated)
#   shardbus.forward=IP:PORT:VIA   relay IP:PORT in the guest to VIA:PORT,
#                                  which QEMU forwards to the broker (repeated)
#   shardbus.host=NAME:IP          an /etc/hosts entry (repeated)
#   shardbus.python=PATH           the host's Python interpreter
#   shardbus.pythonpath=PATH       the folder that contains the holders package
#   shardbus.holder_id, shardbus.bootstrap, shardbus.prefix,
#   shardbus.heartbeat, shardbus.kem   the holder's own settings
#   shardbus.probe=1               report "probe ok" and power off (see the
#                                  backend's accelerator probe)
#   shardbus.tls=1                 read the holder's Kafka TLS files from the
#                                  control port before the holder starts
#
# The serial port named shardbus.control is the backend's private channel:
# the backend writes the TLS files to it, the holder writes its public key
# line to it, and the backend writes "stop" to it to ask for a clean shutdown.

export PATH=/bin
/bin/busybox --install -s /bin

fail() {
    echo "shardbus init: $*" >&2
    reboot -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777,size=16m tmpfs /tmp
mount -t tmpfs -o mode=755,size=1m tmpfs /run

for module in $(cat /modules/modules.load); do
    insmod "/modules/$module" || fail "cannot load kernel module $module"
done

echo "127.0.0.1 localhost" > /etc/hosts
python=
pythonpath=
for word in $(cat /proc/cmdline); do
    value=${word#*=}
    case $word in
        shardbus.share=*)
            tag=${value%%:*}
            path=${value#*:}
            mkdir -p "$path"
            # cache=loose lets the guest cache the read-only files, which
            # halves Python's start-up time over 9p.
            mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 "$tag" "$path" \
                || fail "cannot mount share $tag at $path"
            ;;
        shardbus.host=*) echo "${value#*:} ${value%%:*}" >> /etc/hosts ;;
        shardbus.python=*) python=$value ;;
        shardbus.pythonpath=*) pythonpath=$value ;;
        shardbus.holder_id=*) holder_id=$value ;;
        shardbus.bootstrap=*) bootstrap=$value ;;
        shardbus.prefix=*) prefix=$value ;;
        shardbus.heartbeat=*) heartbeat=$value ;;
        shardbus.kem=*) kem=$value ;;
        shardbus.probe=*) probe=$value ;;
        shardbus.tls=*) tls=$value ;;
    esac
done

control=
for port in /sys/class/virtio-ports/*; do
    if [ "$(cat "$port/name" 2>/dev/null)" = shardbus.control ]; then
        control=/dev/${port##*/}
    fi
done
[ -n "$control" ] || fail "the serial port shardbus.control is missing"
exec 4<>"$control"

if [ "$probe" = 1 ]; then
    echo "probe ok" >&4
    reboot -f
fi

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
for word in $(cat /proc/cmdline); do
    case $word in
        shardbus.forward=*)
            value=${word#*=}
            address=${value%%:*}
            rest=${value#*:}
            port=${rest%%:*}
            via=${rest#*:}
            case $address in
                127.*) ;;
                *) ip addr add "$address/32" dev lo ;;
            esac
            # The broker advertises its host address, and the relay makes
            # that address reachable in the guest too, through QEMU's guestfwd.
            # Busybox's nc listens on every address of the guest and, with
            # -ll, serves each connection with a new relay process.
            nc -ll -p "$port" -e nc "$via" "$port" &
            ;;
    esac
done

tls_variables=
if [ "$tls" = 1 ]; then
    # A line "tls CA_BYTES CERT_BYTES KEY_BYTES", then the three PEM files.
    # They go to a tmpfs, so the holder's TLS key exists only in guest RAM.
    # dd reads one byte at a time so that it never takes bytes past its file.
    read -r word ca_bytes cert_bytes key_bytes <&4
    [ "$word" = tls ] || fail "expected the TLS files on the control port, got '$word'"
    mkdir -m 700 /run/tls
    dd bs=1 count="$ca_bytes" of=/run/tls/ca.pem status=none <&4 || fail "cannot read the TLS CA"
    dd bs=1 count="$cert_bytes" of=/run/tls/holder.pem status=none <&4 || fail "cannot read the TLS certificate"
    (umask 077 && dd bs=1 count="$key_bytes" of=/run/tls/holder.key status=none <&4) \
        || fail "cannot read the TLS key"
    tls_variables="SHARDBUS_KAFKA_TLS_CA=/run/tls/ca.pem SHARDBUS_KAFKA_TLS_CERT=/run/tls/holder.pem"
    tls_variables="$tls_variables SHARDBUS_KAFKA_TLS_KEY=/run/tls/holder.key"
fi

[ -n "$python" ] || fail "shardbus.python is missing from the kernel command line"
cd /tmp
# $tls_variables is unquoted on purpose: it is empty or several words.
# shellcheck disable=SC2086
env -i PATH=/bin HOME=/tmp TMPDIR=/tmp PYTHONPATH="$pythonpath" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SHARDBUS_KAFKA_BOOTSTRAP="$bootstrap" SHARDBUS_TOPIC_PREFIX="$prefix" $tls_variables \
    "$python" -m holders --holder-id "$holder_id" --heartbeat-interval "$heartbeat" --kem "$kem" \
    --key-fd 3 3>&4 4>&- &
holder=$!

# A "stop" line on the control port stops the holder with SIGTERM, on which
# it wipes its fragments.
(
    while read -r command <&4; do
        if [ "$command" = stop ]; then
            kill -TERM "$holder"
            break
        fi
    done
) &

wait "$holder"
echo "shardbus init: the holder exited with status $?; powering off" >&2
reboot -f
