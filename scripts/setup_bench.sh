#!/usr/bin/env bash
# What the benchmarks read beyond `scripts/setup.sh`, from package registries only:
#   matplotlib (the PNGs), and the Debian text packages bench/evolve_base.py's version ladder trains on
#   (GCIDE for v2/v3, WordNet for v4/v5, FreeDict German/Latin/Welsh for the near and far versions,
#   FreeDict French/Spanish/Italian for the far training versions v8/v9).
# Not needed by the tests or the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[bench]"
if command -v apt-get >/dev/null; then
  packages=(dict-gcide wordnet-base dict-freedict-deu-eng dict-freedict-lat-eng dict-freedict-cym-eng
            dict-freedict-fra-eng dict-freedict-spa-eng dict-freedict-ita-eng)
  missing=()
  for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
echo "benchmark dependencies installed"
