#!/usr/bin/env bash
# anylab set-up: Debian packages + a venv with the project, idempotent.
#
# Called by ./anylab on every run (a second run installs nothing and takes well under a second),
# by the Vagrantfile's provisioner and, through ./anylab test, by CI.
# Package post-install scripts would start FRR and BIRD in the root namespace; a temporary
# policy-rc.d forbids that, and whatever policy-rc.d the machine had is put back afterwards.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${ANYLAB_VENV:-$here/.venv}
apt_packages=(frr frr-pythontools bird2 mininet nftables iproute2 iputils-ping procps util-linux
              python3-venv python3-dev gcc net-tools ethtool psmisc curl wrk)

log() { printf 'anylab setup: %s\n' "$*" >&2; }

missing_packages() {
  local p
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || printf '%s\n' "$p"
  done
}

install_packages() {
  local missing
  mapfile -t missing < <(missing_packages)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $(id -u) != 0 ]]; then
    log "missing Debian packages (${missing[*]}); run as root: sudo ./anylab ..."
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
  local stamp=$venv/.anylab-stamp want
  want=$(cat "$here/pyproject.toml" "$here/requirements.lock" | sha256sum | cut -d' ' -f1)
  if [[ -f $stamp && $(cat "$stamp") == "$want" && -x $venv/bin/anylab ]]; then return 0; fi
  log "preparing the Python environment in $venv"
  # Debian's mininet module only imports under the system interpreter, so the venv is made from it.
  [[ -x $venv/bin/python ]] || /usr/bin/python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$here/requirements.lock" \
    -e "$here[dev]"
  # Expose only Debian's mininet package to the venv, not the whole system site-packages.
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  ln -sfn /usr/lib/python3/dist-packages/mininet "$site/mininet"
  printf '%s\n' "$want" >"$stamp"
}

install_packages
install_venv
