"""The product's workflows over the registry: load bases, fine-tune and evaluate adapters, train the generator,
generate adapters, refresh them for a new base version. The CLI, the main job and the benchmarks all go through
these functions.

Each function takes a Registry and plain arguments, returns plain data, and reports progress only through the
callbacks it is given. One module per room, each importing only those before it:

    bases       load_base, BaseLoader, find_task, the generator's conditions (text_encoder, base_condition)
    evaluate    score_on_base (zero-shot, then each adapter, on one loaded base), evaluate_targets
    finetune    finetune_task, finetune_multitask and their run folders; finetune_unregistered
    training    collect_training_set, train (the generator); train_on (a hand-made training set)
    generation  load_generator, fitted_generator, draw, Candidate and choose, generate
    refreshing  plan_refresh, refresh

(`generation` and `refreshing`, not `generate` and `refresh`: a submodule named like a function exported here would
be hidden by it, and `import loragen.workflows.generate` would hand back the function.) Everything public is
exported here, so `from loragen.workflows import X` needs no room's name; to monkeypatch a name, patch it in the
module that calls it.
"""

from loragen.workflows.bases import (
    BaseLoader,
    LoadedBase,
    Notify,
    Progress,
    base_condition,
    bundled_task,
    find_task,
    load_base,
    member_tasks,
    text_encoder,
)
from loragen.workflows.evaluate import (
    EvalTarget,
    TargetScore,
    evaluate_adapters,
    evaluate_base,
    evaluate_targets,
    score_on_base,
    validation_losses,
    validation_scores,
)
from loragen.workflows.finetune import (
    SEEN_TASKS,
    FinetuneOutcome,
    MultitaskOutcome,
    RegisteredCheckpoint,
    default_group_name,
    finetune_multitask,
    finetune_run_dir,
    finetune_task,
    finetune_unregistered,
    multitask_members,
)
from loragen.workflows.generation import (
    CARRIED_OVER,
    MAX_SEED,
    SLUG_LENGTH,
    Candidate,
    Drawn,
    GenerateResult,
    RefineRequest,
    choose,
    draw,
    fitted_generator,
    generate,
    load_generator,
    position_of,
    read_examples,
    register_drawn,
    sample_state_dict,
    slug,
)
from loragen.workflows.refreshing import (
    SELECT_BY,
    AdaptRequest,
    RefreshItem,
    adapt_finetune_config,
    adaptation_examples,
    draw_shifted,
    estimate_refresh,
    generator_note,
    plan_refresh,
    refresh,
)
from loragen.workflows.training import collect_training_set, train, train_on

__all__ = [
    "AdaptRequest", "adapt_finetune_config", "adaptation_examples", "BaseLoader", "CARRIED_OVER", "Candidate",
    "Drawn", "EvalTarget", "FinetuneOutcome",
    "GenerateResult", "LoadedBase", "LoadedGenerator", "MAX_SEED", "MultitaskOutcome", "Notify", "Progress", "RefreshItem",
    "RegisteredCheckpoint", "SEEN_TASKS", "SLUG_LENGTH", "TargetScore", "base_condition", "bundled_task", "choose",
    "collect_training_set", "default_group_name", "distributed_rank", "draw", "draw_shifted", "evaluate_adapters",
    "estimate_refresh", "evaluate_base", "evaluate_targets", "find_task", "finetune_multitask", "finetune_run_dir",
    "finetune_task",
    "finetune_unregistered", "fitted_generator", "RefineRequest", "generate", "generator_note", "read_examples",
    "join_process_group", "load_base", "load_generator", "member_tasks", "multitask_members",
    "plan_refresh", "position_of", "ranks_weight_digests", "refresh", "register_drawn", "sample_state_dict",
    "score_on_base", "SELECT_BY", "slug", "text_encoder", "train", "train_on", "validation_losses", "validation_scores",
]

# The data-parallel helpers live beside the generator's training loop, whose module imports torch: handed out on
# first use, so importing the workflows (as every CLI command does) stays light.
_GENERATOR_TRAINING = ("distributed_rank", "join_process_group", "ranks_weight_digests")
_GENERATOR_SAMPLING = ("LoadedGenerator",)  # likewise: the loaded generator's type lives beside the sampler


def __getattr__(name: str):
    if name in _GENERATOR_TRAINING:
        from loragen.generator import training

        return getattr(training, name)
    if name in _GENERATOR_SAMPLING:
        from loragen.generator import sampling

        return getattr(sampling, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

