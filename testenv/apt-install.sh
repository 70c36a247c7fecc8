#!/usr/bin/env bash
# Installs the Debian packages named as arguments that are not installed yet, without
# starting the services they ship (the tests run their own instances, with their own
# config and state).   testenv/apt-install.sh LABEL PACKAGE...
set -euo pipefail
label="$1"; shift
need=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "[$label] installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
# policy-rc.d: do not start the packaged services.
printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
$SUDO chmod +x /usr/sbin/policy-rc.d
trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "[$label] installed" >&2
