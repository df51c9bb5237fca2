#!/bin/sh
# Builds vdiskfs in release mode and installs the binary, man pages and systemd unit.
#   sh packaging/install.sh [PREFIX]   (default /usr/local)
set -eu
cd "$(dirname "$0")/.."
prefix=${1:-/usr/local}
sh scripts/install-deps.sh
swift build -c release --product vdiskfs
install -D -m 0755 "$(swift build -c release --show-bin-path)/vdiskfs" "$prefix/bin/vdiskfs"
install -D -m 0644 man/vdiskfs.1 "$prefix/share/man/man1/vdiskfs.1"
install -D -m 0644 man/vdiskfs-format.5 "$prefix/share/man/man5/vdiskfs-format.5"
install -D -m 0644 packaging/vdiskfs@.service /etc/systemd/system/vdiskfs@.service
echo "installed vdiskfs in $prefix"
