#!/usr/bin/env bash
# Builds the Debian package of the signer node (`make deb`):
#   target/debian/signer_<version>_<arch>.deb
# with /usr/bin/signer built WITHOUT the `fault-injection` feature (only the
# `signer` package is built, so the test crate's features are not unified into it),
# /usr/bin/signer-hwi (the Bitcoin Core external signer, docs/HWI.md, with its
# example configuration under /usr/share/doc/signer/examples),
# the hardened unit, sysusers.d and tmpfiles.d entries, an example
# /etc/signer/node.toml (a conffile) and the documentation. No cargo-deb: a staging
# tree and `dpkg-deb --build --root-owner-group` (dpkg-dev for dpkg-shlibdeps).
#
# Environment: CARGO (default cargo); SIGNER_DEB_SKIP_BUILD=1 packages an existing
# target/release/signer and target/release/signer-hwi without running cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}

if [ "${SIGNER_DEB_SKIP_BUILD:-0}" != 1 ]; then
  "$CARGO" build --release -p signer --bins
fi
BIN=target/release/signer
HWI_BIN=target/release/signer-hwi
for b in "$BIN" "$HWI_BIN"; do
  [ -x "$b" ] || { echo "build-deb: $b missing" >&2; exit 1; }
done

VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
ARCH=$(dpkg --print-architecture)
OUT=target/debian
STAGE=$OUT/signer_${VERSION}_${ARCH}
rm -rf "$STAGE"
mkdir -p "$STAGE/DEBIAN"

install -D -m 0755 "$BIN" "$STAGE/usr/bin/signer"
strip --strip-unneeded "$STAGE/usr/bin/signer"
install -D -m 0755 "$HWI_BIN" "$STAGE/usr/bin/signer-hwi"
strip --strip-unneeded "$STAGE/usr/bin/signer-hwi"
install -D -m 0644 systemd/signer.service "$STAGE/usr/lib/systemd/system/signer.service"
install -D -m 0644 systemd/sysusers.d/signer.conf "$STAGE/usr/lib/sysusers.d/signer.conf"
install -D -m 0644 systemd/tmpfiles.d/signer.conf "$STAGE/usr/lib/tmpfiles.d/signer.conf"
install -d -m 0750 "$STAGE/etc/signer"
install -m 0640 packaging/node.toml "$STAGE/etc/signer/node.toml"

DOC=$STAGE/usr/share/doc/signer
install -D -m 0644 README.md "$DOC/README.md"
install -m 0644 SECURITY.md "$DOC/SECURITY.md"
install -d "$DOC/docs"
install -m 0644 docs/*.md "$DOC/docs/"
install -D -m 0644 packaging/node.toml "$DOC/examples/node.toml"
install -m 0644 packaging/signer-hwi.toml "$DOC/examples/signer-hwi.toml"
cat > "$DOC/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: signer
License: Apache-2.0

Files: *
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF

# Shared-library dependencies of the binaries (dpkg-shlibdeps needs a debian/control).
SHL=$(mktemp -d)
trap 'rm -rf "$SHL"' EXIT
mkdir -p "$SHL/debian"
printf 'Source: signer\n\nPackage: signer\nArchitecture: any\n' > "$SHL/debian/control"
BIN_ABS=$(realpath "$STAGE/usr/bin/signer")
HWI_ABS=$(realpath "$STAGE/usr/bin/signer-hwi")
DEPENDS=$(cd "$SHL" && dpkg-shlibdeps -O "$BIN_ABS" "$HWI_ABS" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$DEPENDS" ] || { echo "build-deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)

cat > "$STAGE/DEBIAN/control" <<EOF
Package: signer
Version: $VERSION
Architecture: $ARCH
Maintainer: signer maintainers <signer@localhost>
Installed-Size: $SIZE
Depends: $DEPENDS, systemd (>= 252)
Recommends: libtss2-tcti-device0
Suggests: softhsm2, postgresql-client
Section: net
Priority: optional
Description: threshold-signing Bitcoin custody node
 One node of a t-of-n threshold-signing cluster (CGGMP24 ECDSA and FROST
 Taproot): key shares sealed by a PKCS#11 HSM or a TPM 2.0, QUIC with mutual
 TLS between nodes, deterministic policy and signed votes before signing, and
 a hash-chained audit log. Runs as the hardened systemd service signer.service
 (Type=notify, watchdog); see /usr/share/doc/signer/docs/OPERATIONS.md.
 signer-hwi lets a Bitcoin Core wallet use a cluster key as an external
 signer (bitcoind -signer=signer-hwi); see docs/HWI.md.
EOF
echo /etc/signer/node.toml > "$STAGE/DEBIAN/conffiles"

cat > "$STAGE/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# signer: create the user and directories; the service is not enabled or started
# here (custody, certificates and credentials must be provisioned first:
# /usr/share/doc/signer/docs/OPERATIONS.md).
set -e
if [ "$1" = configure ]; then
    systemd-sysusers /usr/lib/sysusers.d/signer.conf
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/signer.conf
    chgrp signer /etc/signer/node.toml
    chmod 0640 /etc/signer/node.toml
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
exit 0
EOF
cat > "$STAGE/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# signer: stop the node before its binary goes away (upgrades restart it in postinst
# only if the operator does: `systemctl restart signer`, one node at a time).
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop signer.service || true
fi
exit 0
EOF
cat > "$STAGE/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# signer: never deletes /var/lib/signer, the database or the HSM/TPM keys, even on
# purge: they hold this node's key shares.
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
EOF
chmod 0755 "$STAGE/DEBIAN/postinst" "$STAGE/DEBIAN/prerm" "$STAGE/DEBIAN/postrm"

DEB=$OUT/signer_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
