#!/usr/bin/env bash
# Installs the Debian packages that building, testing and the demo need, and
# only those that are missing: a machine that has them all runs no apt-get.
set -euo pipefail

# The one list of the project's Debian packages.
packages=(
  build-essential
  cmake
  libdb5.3++-dev   # Berkeley DB 5.3: db.h and libdb (libdb5.3-dev), and the C++ API
  db5.3-util       # db5.3_dump, db5.3_stat: look inside a dict
  libgtest-dev
  libbenchmark-dev
  libmemcached-dev # the memcached backend (smisk::ipc_memcached)
  memcached        # the server its tests run on loopback
  libfcgi-dev      # the FastCGI example (examples/fastcgi) is a libfcgi program
  spawn-fcgi       # starts its prefork workers (demo, tests)
  nginx-light      # the web server in front of them: a private instance on 127.0.0.1 (demo, tests)
  curl             # the demo's and the tests' HTTP client
  gdb              # the crash tests print every thread's stack when something hangs
)

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "install-deps: no dpkg-query, not a Debian system; install by hand: ${packages[*]}" >&2
  exit 0
fi

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  if [[ "$status" != installed ]]; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages are installed"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=()
if ((EUID != 0)); then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "install-deps: not root and no sudo; install as root: ${missing[*]}" >&2
    exit 1
  fi
fi
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${missing[@]}"
