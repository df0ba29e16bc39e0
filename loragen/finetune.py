"""LoRA fine-tuning with peft: the trained adapters the generator learns from, and the ceiling it is compared to.

A run trains on a task's (prompt, answer) pairs, with the loss on the answer
tokens only, and keeps the last K checkpoints (RPG/ORAL learn from several
checkpoints of each run). Its full state (LoRA weights, optimizer, data order,
RNG) is saved atomically every `checkpoint_every` steps, so a killed run resumes
where it stopped and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from loragen.atomic import staged_folder, torch_load_state, torch_save_atomic
from loragen.config import FinetuneConfig, LoraConfig
from loragen.errors import LoragenError

STATE_FILE = "state.pt"
STATE_KEYS = ("settings", "step", "lora", "optimizer", "order", "torch_rng", "losses")
IGNORE_INDEX = -100


@dataclass
class Checkpoint:
    step: int
    path: Path
    loss: float


@dataclass
class FinetuneResult:
    run_dir: Path
    checkpoints: list[Checkpoint]
    wall_time_s: float          # time spent training in this call (0 when already finished)
    resumed_from_step: int
    losses: list[float] = field(default_factory=list)
    total_train_s: float = 0.0  # time spent training the run over every call that trained it


def checkpoint_steps(config: FinetuneConfig) -> list[int]:
    """The steps whose adapters are kept: the last `checkpoints`, `checkpoint_every` apart."""
    steps = [config.steps - i * config.checkpoint_every for i in range(config.checkpoints)]
    return sorted(s for s in steps if s > 0)


def encode_examples(tokenizer, examples: Sequence[tuple[str, str]], stop: str = "\n") -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per example; the model learns the answer and the stop string after it.

    Prompt and answer are encoded separately, without special tokens, as lm-eval
    encodes context and continuation.
    """
    encoded = []
    for prompt, answer in examples:
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        answer_ids = tokenizer(answer + stop, add_special_tokens=False).input_ids
        encoded.append((prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids))
    return encoded


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def make_peft_model(model, lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    leaf_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    unknown = sorted(set(lora.target_modules) - leaf_names)
    if unknown:
        raise LoragenError(f"target module(s) {', '.join(unknown)} not in this base (it has: {', '.join(sorted(leaf_names))})")
    config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=sorted(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


class _BatchOrder:
    """Seeded epoch-wise shuffling whose position is part of the saved state."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size = size, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def next_batch(self) -> list[int]:
        while len(self.order) < self.batch_size:
            self.order += torch.randperm(self.size, generator=self.generator).tolist()
        batch, self.order = self.order[: self.batch_size], self.order[self.batch_size:]
        return batch

    def state(self) -> dict:
        return {"generator": self.generator.get_state(), "order": list(self.order)}

    def load(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = list(state["order"])


def lora_config_of_folder(folder: Path, name: str) -> LoraConfig:
    """The LoRA shape of adapter `name`'s PEFT folder, as fine-tuning takes it: a run warm-started from it must
    have its rank, alpha and modules. An alpha that is not a whole number (LoraConfig's) is refused in one line."""
    from loragen.adapters import read_adapter_folder

    shape = read_adapter_folder(Path(folder))
    if not shape.alpha.is_integer():
        raise LoragenError(f"{name} has lora_alpha {shape.alpha:g}; a warm fine-tune needs a whole number")
    return LoraConfig(r=shape.rank, alpha=int(shape.alpha), target_modules=sorted(shape.target_leaf_names()))


def load_lora_weights(peft_model, state_dict: dict[str, torch.Tensor]) -> None:
    """Set the LoRA's weights to a saved adapter's, exactly: every trainable tensor from it, nothing left over,
    shapes equal (a start of another rank or other modules is refused in one line)."""
    from peft import set_peft_model_state_dict

    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    try:
        result = set_peft_model_state_dict(peft_model, state_dict)
    except RuntimeError as error:  # torch's size mismatch: name the first line only
        raise LoragenError(f"the warm start does not fit this LoRA: {str(error).strip().splitlines()[-1].strip()}") from None
    missing = sorted(name for name in result.missing_keys if name in trainable)
    if result.unexpected_keys or missing:
        stray = (result.unexpected_keys or missing)[0]
        raise LoragenError(f"the warm start does not fit this LoRA: {'unexpected' if result.unexpected_keys else 'missing'} "
                           f"tensor {stray}")


def pad_token_id(tokenizer) -> int:
    """What `collate` pads with: the tokenizer's pad token, or 0 for one without (labels mask the padding anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _save_adapter(peft_model, path: Path) -> None:
    """Write a PEFT folder into place atomically (a half-written checkpoint is never visible)."""
    if path.exists():
        return
    with staged_folder(path) as staging:
        peft_model.save_pretrained(str(staging))


def _lora_state(peft_model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in peft_model.named_parameters() if p.requires_grad}


def finetune(model, tokenizer, examples: Sequence[tuple[str, str]], lora: LoraConfig, config: FinetuneConfig,
             run_dir: Path, progress: Callable[[int, int, float], None] | None = None,
             start_from: dict[str, torch.Tensor] | None = None) -> FinetuneResult:
    """Train a LoRA on `examples`, resuming from `run_dir` if an earlier run of the same settings stopped.

    `start_from` (a PEFT adapter's saved tensors, of `lora`'s rank and modules) is a warm start: the LoRA begins
    at those weights instead of peft's initialisation; its digest is part of the run's settings.
    The LoRA layers are removed from `model` afterwards, so one loaded base serves many runs.
    """
    if not examples:
        raise LoragenError("no training examples")
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    settings = {"lora": asdict(lora), "finetune": asdict(config), "examples": len(examples)}
    if start_from is not None:  # only then, so the settings of cold runs saved before warm starts still match
        from loragen.adapters import state_dict_digest

        settings["start_from"] = state_dict_digest(start_from)
    torch.manual_seed(config.seed)
    peft_model = make_peft_model(model, lora)
    if start_from is not None:
        load_lora_weights(peft_model, start_from)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    order = _BatchOrder(len(examples), config.batch_size, config.seed)
    data = encode_examples(tokenizer, examples)
    pad_id = pad_token_id(tokenizer)
    keep = set(checkpoint_steps(config))
    losses: dict[int, float] = {}
    start = 0
    earlier_train_s = 0.0

    state_path = run_dir / STATE_FILE
    if state_path.is_file():
        state = torch_load_state(state_path, STATE_KEYS)
        if state["settings"] != settings:
            raise LoragenError(f"{run_dir} holds a run with other settings; remove it or change --seed")
        with torch.no_grad():
            named = dict(peft_model.named_parameters())
            for name, value in state["lora"].items():
                named[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        order.load(state["order"])
        torch.set_rng_state(state["torch_rng"])
        losses = state["losses"]
        start = state["step"]
        earlier_train_s = state.get("train_seconds", 0.0)  # absent in states saved before it was kept

    peft_model.train()
    began = time.perf_counter()
    for step in range(start + 1, config.steps + 1):
        warmup = min(1.0, step / max(1, config.steps // 10))
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * warmup
        batch = collate([data[i] for i in order.next_batch()], pad_id)
        loss = peft_model(**batch).loss
        if not torch.isfinite(loss):
            raise LoragenError(f"training diverged at step {step} (loss {loss.item()}); lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        losses[step] = loss.item()
        if step in keep:
            _save_adapter(peft_model, run_dir / "checkpoints" / f"step-{step:06d}")
        if step in keep or step % config.checkpoint_every == 0 or step == config.steps:
            torch_save_atomic({"settings": settings, "step": step, "lora": _lora_state(peft_model),
                               "optimizer": optimizer.state_dict(), "order": order.state(),
                               "torch_rng": torch.get_rng_state(), "losses": losses,
                               "train_seconds": earlier_train_s + time.perf_counter() - began}, state_path)
        if progress:
            progress(step, config.steps, losses[step])
    elapsed = time.perf_counter() - began if start < config.steps else 0.0
    peft_model.unload()  # hand the caller's model back without LoRA layers
    checkpoints = [Checkpoint(step=s, path=run_dir / "checkpoints" / f"step-{s:06d}", loss=losses.get(s, float("nan")))
                   for s in sorted(keep)]
    missing = [c.path for c in checkpoints if not c.path.is_dir()]
    if missing:
        raise LoragenError(f"checkpoint {missing[0]} is missing from the finished run in {run_dir}")
    return FinetuneResult(run_dir=run_dir, checkpoints=checkpoints, wall_time_s=elapsed,
                          resumed_from_step=start, losses=[losses[s] for s in sorted(losses)],
                          total_train_s=earlier_train_s + elapsed)
