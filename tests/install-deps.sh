#!/usr/bin/env bash
# Install what the whole test suite needs on a fresh Debian machine (run as root):
# FUSE 3 (mount tests), Ceph RGW (a real S3 server on loopback), restic (benchmark smoke run),
# and snap itself with its test extras (pytest, hypothesis, moto server).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    fuse3 restic ceph-mon ceph-osd radosgw ceph-common >/dev/null
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
