#!/usr/bin/env bash
# Regenerate requirements.lock: every package of the venv (the project's dependencies and its dev
# extra, and theirs) pinned with the hashes of all its files, by uv's pip-compatible resolver.
#
#   scripts/lock.sh            keep the versions already locked, add what pyproject.toml now asks for
#   scripts/lock.sh --upgrade  resolve everything afresh to the newest allowed versions
#
# uv runs from a venv of its own (.lock-venv, pinned below), so the project's venv is not touched;
# tests/unit/test_lock.py checks the result in CI.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=$here/.lock-venv
uv_version=0.13.9
if [[ ! -x $tools/bin/uv ]] || [[ $("$tools/bin/uv" --version) != "uv $uv_version"* ]]; then
  /usr/bin/python3 -m venv "$tools"
  "$tools/bin/python" -m pip install -q --disable-pip-version-check "uv==$uv_version"
fi
keep=()
if [[ ${1-} != --upgrade ]]; then
  cp "$here/requirements.lock" "$tools/previous.lock"
  keep=(-c "$tools/previous.lock")
fi
cd "$here"
"$tools/bin/uv" pip compile pyproject.toml scripts/build-requirements.in --extra dev --generate-hashes --quiet \
  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu --custom-compile-command scripts/lock.sh \
  "${keep[@]}" -o requirements.lock
