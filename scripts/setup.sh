#!/usr/bin/env bash
# anylab set-up: Debian packages + a venv with the project, idempotent.
#
#   scripts/setup.sh           install what is missing (root for Debian packages)
#   scripts/setup.sh --check   install nothing; exit 0 when everything is in place, 1 when not
#
# ./anylab runs --check on every call (one dpkg-query and one sha256sum, ~60 ms) and the full set-up
# only for a command that needs it, never for --help or --version. The Vagrantfile's provisioner and,
# through ./anylab test, CI call it too. The venv is installed from requirements.lock, every package
# pinned with its hashes (pip --require-hashes; scripts/lock.sh regenerates it with uv), then the project
# itself without dependencies.
# Package post-install scripts would start FRR and BIRD in the root namespace; a temporary
# policy-rc.d forbids that, and whatever policy-rc.d the machine had is put back afterwards.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${ANYLAB_VENV:-$here/.venv}
apt_packages=(frr frr-pythontools bird2 mininet nftables iproute2 iputils-ping procps util-linux
              python3-venv python3-dev gcc net-tools ethtool psmisc curl wrk tcpdump python3-seccomp
              iptables vde2 libc6-dev etcd-server openssl knot nsd unbound bind9 prometheus prometheus-alertmanager)

log() { printf 'anylab setup: %s\n' "$*" >&2; }

missing_packages() {
  # One dpkg-query for all of them: a package it does not know prints nothing on stdout.
  local status
  status=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${apt_packages[@]}" 2>/dev/null || true)
  local p
  for p in "${apt_packages[@]}"; do
    grep -qx "$p installed" <<<"$status" || printf '%s\n' "$p"
  done
}

venv_wanted() {
  cat "$here/pyproject.toml" "$here/requirements.lock" "$here/scripts/setup.sh" "$here/lab/links/relay.c" \
    | sha256sum | cut -d' ' -f1
}

venv_ready() {
  local stamp=$venv/.anylab-stamp
  [[ -f $stamp && -x $venv/bin/anylab && -x $venv/bin/anylab-relay && $(cat "$stamp") == "$(venv_wanted)" ]]
}

install_packages() {
  local missing
  mapfile -t missing < <(missing_packages)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $(id -u) != 0 ]]; then
    log "missing Debian packages (${missing[*]}); run as root: sudo ./anylab setup"
    exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  local prc=/usr/sbin/policy-rc.d saved=""
  if [[ -e $prc ]]; then saved=$(mktemp); cp -a "$prc" "$saved"; fi
  restore_prc() {
    if [[ -n $saved ]]; then mv -f "$saved" "$prc"; else rm -f "$prc"; fi
  }
  trap restore_prc EXIT
  printf '#!/bin/sh\n# anylab: no service starts while packages install\nexit 101\n' >"$prc"
  chmod 755 "$prc"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  restore_prc
  trap - EXIT
}

install_venv() {
  venv_ready && return 0
  log "preparing the Python environment in $venv"
  # Debian's mininet module only imports under the system interpreter, so the venv is made from it.
  [[ -x $venv/bin/python ]] || /usr/bin/python3 -m venv "$venv"
  local pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  # Every package, direct or not, at the lock's version and with one of its hashes.
  "${pip[@]}" --require-hashes -r "$here/requirements.lock"
  # The project itself: no dependencies (all are above), built with the venv's own setuptools.
  "${pip[@]}" --no-deps --no-build-isolation -e "$here"
  # Expose only Debian's mininet package and libseccomp's binding (the isolates' filter, tenant/sandbox.py)
  # to the venv, not the whole system site-packages.
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  ln -sfn /usr/lib/python3/dist-packages/mininet "$site/mininet"
  ln -sfn /usr/lib/python3/dist-packages/seccomp.cpython-311-x86_64-linux-gnu.so "$site/seccomp.cpython-311-x86_64-linux-gnu.so"
  # The link relay (lab/links/relay.c): C, because a packet's pass through it must cost microseconds.
  gcc -O2 -Wall -Werror -o "$venv/bin/anylab-relay" "$here/lab/links/relay.c" -lm
  venv_wanted >"$venv/.anylab-stamp"
}

if [[ ${1-} == --check ]]; then
  [[ -z $(missing_packages) ]] && venv_ready
  exit
fi
install_packages
install_venv
