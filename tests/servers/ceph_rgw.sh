#!/usr/bin/env bash
# Start or stop a throw-away Ceph RGW (S3 server) on loopback for tests.
#
#   ceph_rgw.sh start DIR [RGW_PORT [MON_PORT]]   start; prints shell assignments on stdout:
#                                                   CEPH_RGW_ENDPOINT=http://127.0.0.1:PORT
#                                                   CEPH_RGW_ACCESS_KEY=...  CEPH_RGW_SECRET_KEY=...
#   ceph_rgw.sh stop DIR                           stop every daemon started in DIR, remove DIR
#
# With CEPH_RGW_WATCH_PID=PID in the environment, start also leaves a watchdog that stops the
# cluster when process PID ends, so a killed test run does not leave daemons behind.
#
# One monitor, one memstore OSD (all data in RAM: memory grows with what tests store), one
# radosgw; no manager (RGW does not need one). Everything lives under DIR and listens on 127.0.0.1 only. The S3 user's keys
# are random per run: they are test credentials for a server that dies with the test session.
#
# Facts learned the hard way on this machine:
# - with "auth ... = none", every ms_*_mode must be "crc" too, else radosgw hangs at start;
# - rgw_frontends needs tcp_nodelay=1, else small GETs take ~40 ms (Nagle + delayed ACK);
# - the default Paxos pacing (1 s per monitor change) made radosgw's first start take 9 s.
# Needs: apt-get install -y ceph-mon ceph-osd radosgw ceph-common
set -euo pipefail

die() { echo "ceph_rgw.sh: $*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

T0=$(date +%s%3N)
step() {  # record how long each phase took: $DIR/log/start.log
    local ms=$(($(date +%s%3N) - T0))
    printf '%d.%03ds %s\n' $((ms / 1000)) $((ms % 1000)) "$*" >>"$DIR/log/start.log"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "ceph_rgw.sh: timed out waiting for $what; logs in $DIR/log" >&2
            tail -n 20 "$DIR"/log/*.log >&2 || true
            return 1
        fi
        sleep 0.2
    done
}

start() {
    for tool in ceph-mon ceph-osd radosgw radosgw-admin monmaptool ceph; do
        command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y ceph-mon ceph-osd radosgw ceph-common)"
    done
    local rgw_port=${1:-$(free_port)} mon_port=${2:-$(free_port)}
    mkdir -p "$DIR"/{run,log,mon,osd}
    DIR=$(cd "$DIR" && pwd)
    local fsid conf="$DIR/ceph.conf"
    fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
    cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
ms_cluster_mode = crc
ms_service_mode = crc
ms_client_mode = crc
ms_mon_cluster_mode = crc
ms_mon_service_mode = crc
ms_mon_client_mode = crc
ms_bind_msgr1 = false
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
keyring = /dev/null
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
osd objectstore = memstore
memstore device bytes = 2147483648
osd data = $DIR/osd/\$cluster-\$id
mon data = $DIR/mon/\$cluster-\$id
osd max object name len = 460
osd max object namespace len = 64
debug ms = 0
# Each monitor change (radosgw creates ~6 pools at first start) waits for a Paxos round,
# paced at 1 s by default: radosgw took 9 s to start. A single monitor needs no pacing.
paxos propose interval = 0.01
paxos min wait = 0.001

[client.rgw.test]
rgw frontends = beast endpoint=127.0.0.1:$rgw_port tcp_nodelay=1
rgw dns name = 127.0.0.1
rgw enable usage log = false
rgw thread pool size = 64
EOF
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$DIR/monmap" >/dev/null
    ceph-mon -c "$conf" -i a --mkfs --monmap "$DIR/monmap" >/dev/null 2>&1 \
        || die "ceph-mon --mkfs failed; see $DIR/log"
    ceph-mon -c "$conf" -i a >>"$DIR/log/daemons.out" 2>&1
    step "monitor started"
    wait_for 30 "monitor" ceph -c "$conf" --connect-timeout 2 mon stat
    step "monitor answers"
    local osd_id
    osd_id=$(ceph -c "$conf" osd create)
    mkdir -p "$DIR/osd/ceph-$osd_id"
    ceph-osd -c "$conf" -i "$osd_id" --mkfs >/dev/null 2>&1 || die "ceph-osd --mkfs failed; see $DIR/log"
    ceph-osd -c "$conf" -i "$osd_id" >>"$DIR/log/daemons.out" 2>&1
    step "osd started"
    wait_for 30 "OSD up" bash -c "ceph -c '$conf' osd stat -f json | grep -q '\"num_up_osds\":1'"
    step "osd up"
    radosgw -c "$conf" -n client.rgw.test >>"$DIR/log/daemons.out" 2>&1
    wait_for 60 "radosgw on port $rgw_port" \
        python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$rgw_port/', timeout=2)"
    step "radosgw answers"
    local access secret
    access=$(python3 -c 'import secrets, string; print("".join(secrets.choice(string.ascii_uppercase) for _ in range(20)))')
    secret=$(python3 -c 'import secrets; print(secrets.token_hex(20))')
    # --admin-socket='': the running radosgw already owns client.rgw.test's socket.
    radosgw-admin -c "$conf" -n client.rgw.test --admin-socket= user create --uid=snaptest --display-name="snap tests" \
        --access-key="$access" --secret-key="$secret" >/dev/null
    step "user created"
    if [[ -n "${CEPH_RGW_WATCH_PID:-}" ]]; then
        setsid bash "$0" watch "$DIR" "$CEPH_RGW_WATCH_PID" </dev/null >/dev/null 2>&1 &
    fi
    printf 'CEPH_RGW_ENDPOINT=http://127.0.0.1:%s\nCEPH_RGW_ACCESS_KEY=%s\nCEPH_RGW_SECRET_KEY=%s\n' \
        "$rgw_port" "$access" "$secret"
}

alive() {  # a zombie (state Z) has exited; only its parent can reap it
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n "$state" && "$state" != Z ]]
}

stop() {
    [[ -d "$DIR/run" ]] || { rm -rf "$DIR"; return 0; }
    # Read every pid first: daemons remove their pid files while they shut down.
    local pidfile pid pids=()
    for pidfile in "$DIR"/run/client.rgw.test.pid "$DIR"/run/osd.*.pid "$DIR"/run/mon.*.pid; do
        pid=$(cat "$pidfile" 2>/dev/null) && pids+=("$pid")
    done
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # Give the daemons a moment to go, then make sure (by pid, never by name). All data is in
    # RAM and thrown away, so there is no point in waiting long for a clean shutdown.
    local _ alive
    for _ in $(seq 10); do
        alive=0
        for pid in "${pids[@]}"; do alive "$pid" && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do alive "$pid" && kill -9 "$pid" 2>/dev/null; done
    rm -rf "$DIR"
}

cmd=${1:-}
DIR=${2:-}
[[ -n "$cmd" && -n "$DIR" ]] || die "usage: $0 start|stop DIR [RGW_PORT [MON_PORT]]"
case "$cmd" in
    start) shift 2; start "$@" ;;
    watch)  # internal: stop the cluster in DIR once process $3 is gone (or DIR was removed)
        while [[ -d "$DIR/run" ]] && kill -0 "${3:?}" 2>/dev/null; do sleep 1; done
        stop ;;
    stop) stop ;;
    *) die "unknown command $cmd (start|stop)" ;;
esac
