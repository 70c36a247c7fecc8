#!/usr/bin/env bash
# Installs what the real node and the image builds need, from Debian packages:
# containerd, runc and the CNI plugins (the node), iptables and conntrack (kube-proxy),
# socat (the apiserver relay on the pod bridge), debootstrap and buildah (images, with no
# registry and no Docker engine), gcc (the static pause binary). Packaged services are not
# started: the real node runs its own containerd with its own config and state.
exec "$(dirname "$0")/apt-install.sh" node containerd runc containernetworking-plugins \
  iptables conntrack socat debootstrap buildah gcc libc6-dev
