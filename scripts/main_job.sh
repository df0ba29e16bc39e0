#!/usr/bin/env bash
# The main job on the bundled default: the real SmolLM2-135M-Instruct and the bundled real tasks.
#   1. register the base;  2. fine-tune LoRAs on three seen tasks of the committed split (english_inflection);
#   3. fine-tune one multi-task LoRA on the union of the same three (the baseline a generator must beat);
#   4. train the generator on the single-task adapters, honouring the split (--split);
#   5. generate an adapter for verb_past_participle, a task the split holds out (the generator never saw
#      its adapters, data or descriptions), from its description alone: a blend of the registered adapters;
#   6. generate it again refined on 5 examples of the task (--examples: seconds, kept only if held-back examples
#      do better);
#   7. score zero-shot, generated, refined, the nearest registered adapter by meaning (verb_past_tense: a
#      user's own pick; the text encoder ranks verb_gerund first) and the multi-task LoRA on it, and compare.
# Idempotent: a second run reuses what the first registered and trained.
# LORAGEN_HOME picks the registry (default ~/.loragen); MAIN_JOB_STEPS scales the fine-tuning.
set -euo pipefail
BASE=smollm2-135m
STEPS=${MAIN_JOB_STEPS:-60}
SEEN=(verb_past_tense verb_gerund noun_plural)
HELD_OUT=verb_past_participle
GROUP=inflection-multitask

loragen show "$BASE" --json >/dev/null 2>&1 || loragen base add "$BASE" --from bundled:smollm2
for task in "${SEEN[@]}"; do
  loragen finetune --task "$task" --base "$BASE" --steps "$STEPS" --checkpoints 3 --checkpoint-every 10 --lr 2e-3
done
# Twice a single task's steps: the three tasks' examples in one run (each task weighs the same).
loragen finetune --tasks "$(IFS=,; echo "${SEEN[*]}")" --name "$GROUP" --exclude-held-out --base "$BASE" \
  --steps $((2 * STEPS)) --checkpoints 1 --lr 2e-3
loragen train --split --steps 1500 --lr 5e-3
DESCRIPTION="Give the past participle of an English verb."
loragen generate --task "$DESCRIPTION" --name "$HELD_OUT" --base "$BASE" --seed 0
GENERATED=$(loragen list --task "$HELD_OUT" --origin generated --base "$BASE" -q | tail -1)
loragen generate --task "$DESCRIPTION" --name "$HELD_OUT-refined" --base "$BASE" --seed 0 \
  --examples "$HELD_OUT" --shots 5
loragen eval --base "$BASE" --tasks "$HELD_OUT" --limit 50
loragen eval "$GENERATED" \
  "$(loragen list --task "$HELD_OUT-refined" --origin generated --base "$BASE" -q | tail -1)" \
  "$(loragen list --task verb_past_tense --base "$BASE" -q | tail -1)" \
  "$(loragen list --task "$GROUP" --base "$BASE" -q | tail -1)" \
  --tasks "$HELD_OUT" --limit 50
loragen eval --compare
loragen list
