#!/usr/bin/env bash
# The main job on the bundled default: the real SmolLM2-135M-Instruct and the bundled real tasks.
#   1. register the base;  2. fine-tune LoRAs on two tasks (the generator's training data);
#   3. train the generator on them;  4. generate an adapter from a description alone;
#   5. evaluate zero-shot, trained and generated with lm-eval and compare.
# Idempotent: a second run reuses what the first registered and trained.
# LORAGEN_HOME picks the registry (default ~/.loragen); MAIN_JOB_STEPS scales the fine-tuning.
set -euo pipefail
BASE=smollm2-135m
STEPS=${MAIN_JOB_STEPS:-60}

loragen show "$BASE" --json >/dev/null 2>&1 || loragen base add "$BASE" --from bundled:smollm2
for task in element_symbol noun_singular; do
  loragen finetune --task "$task" --base "$BASE" --steps "$STEPS" --checkpoints 3 --checkpoint-every 10 --lr 2e-3
done
loragen train --steps 300
loragen generate --task "Give the chemical symbol of a chemical element" --name element_symbol --base "$BASE" --seed 0
loragen eval --base "$BASE" --tasks element_symbol,noun_singular --limit 50
loragen eval $(loragen list --task element_symbol -q | tail -1) $(loragen list --origin trained --task element_symbol -q | tail -1) --limit 50
loragen eval --compare
loragen list
