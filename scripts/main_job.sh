#!/usr/bin/env bash
# The main job on the bundled default: the real SmolLM2-135M-Instruct and the bundled real tasks.
# Idempotent: a second run reuses what the first registered.
set -euo pipefail
BASE=smollm2-135m

loragen show "$BASE" --json >/dev/null 2>&1 || loragen base add "$BASE" --from bundled:smollm2
loragen list bases
