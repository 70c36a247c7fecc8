#!/usr/bin/env bash
# Installs what the real node and the image builds need, from Debian packages:
# containerd, runc and the CNI plugins (the node), iptables and conntrack (kube-proxy),
# socat (the apiserver relay on the pod bridge), debootstrap and buildah (images, with no
# registry and no Docker engine), gcc (the static pause binary). Packaged services are not
# started: the real node runs its own containerd with its own config and state.
set -euo pipefail
pkgs=(containerd runc containernetworking-plugins iptables conntrack socat debootstrap buildah gcc libc6-dev)
need=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "[node] installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
$SUDO chmod +x /usr/sbin/policy-rc.d
trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "[node] installed" >&2
