#!/usr/bin/env bash
# Installs the reference tools the benchmark compares against (Debian packages). Idempotent: a tool
# already on PATH is not reinstalled, and apt is only touched when something is missing.
set -euo pipefail

missing=()
command -v mydumper >/dev/null 2>&1 && command -v myloader >/dev/null 2>&1 || missing+=(mydumper)
# GNU time measures each stage's peak RSS; the shell keyword `time` cannot.
[ -x /usr/bin/time ] || missing+=(time)
command -v gzip >/dev/null 2>&1 || missing+=(gzip)
command -v mariadb-dump >/dev/null 2>&1 || missing+=(mariadb-client)
# The files benchmark (bench/files.py) compares against tar | pigz and restic.
command -v pigz >/dev/null 2>&1 || missing+=(pigz)
command -v restic >/dev/null 2>&1 || missing+=(restic)

if [ ${#missing[@]} -eq 0 ]; then
  echo "bench/setup.sh: mydumper, myloader, GNU time, gzip, mariadb-client, pigz and restic already installed"
  exit 0
fi

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "bench/setup.sh: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
