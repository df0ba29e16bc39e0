"""Settings: dataclasses with defaults, overridden by loragen.toml files and LORAGEN_* variables.

Precedence, strongest first: command-line flag > LORAGEN_* environment variable >
./loragen.toml (the project's) > <home>/loragen.toml (the user's) > defaults here.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from loragen.architectures import DEFAULT_ARCHITECTURE
from loragen.errors import LoragenError

# What the generator's settings may be. The network modules import these (not the other
# way round), so that settings are checked here, when they are read, without importing torch.
PREDICTION_TYPES = ("sample", "epsilon")   # what the denoiser predicts: x0 or the noise
SAMPLING_METHODS = ("ddim", "ddpm")
# Where the task loss reads the generator's x0: from pure noise at the last timestep (what sampling starts
# from; needs no adapter), or from the task's own adapter noised at a random timestep (as the diffusion loss).
TASK_LOSS_TIMESTEPS = ("noise", "sampled")
# What a generator emits: coefficients over the library of its training adapters per slot (issue 20), or the
# adapter's raw A/B values cut into tokens (the first design, kept as a comparison).
REPRESENTATIONS = ("library", "raw")
# What a library generator's leave_one_out rows mask: the row's own task (it learns to compose a task the registry
# lacks from its neighbours) or the row's own base version (it learns to make a version's adapter from the other
# versions' adapters, the task's own among them: what a refresh asks of it).
LEAVE_OUT = ("task", "version")
DDPM_TRAIN_TIMESTEPS = 1000                # the noise schedule's length (DDPMSchedule's default)
DENOISER_NORM_GROUPS = 8                   # GroupNorm groups in every denoiser conv block
SEED_LIMIT = 2**32                         # seeds are 0 .. 2**32 - 1 (torch adds offsets to them)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is not a width


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_positive_ints(section: str, settings: Any, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(settings, name)
        if not _is_int(value) or value <= 0:
            raise LoragenError(f"{section}.{name} must be a positive integer (got {value!r})")


def _check_positive_number(section: str, name: str, value: Any) -> None:
    if not _is_number(value) or value <= 0:
        raise LoragenError(f"{section}.{name} must be a positive number (got {value!r})")


def _check_bools(section: str, settings: Any, names: Sequence[str]) -> None:
    for name in names:
        if not isinstance(getattr(settings, name), bool):
            raise LoragenError(f"{section}.{name} must be true or false (got {getattr(settings, name)!r})")


def _check_seed(section: str, value: Any) -> None:
    if not _is_int(value) or not 0 <= value < SEED_LIMIT:
        raise LoragenError(f"{section}.seed must be an integer from 0 to {SEED_LIMIT - 1} (got {value!r})")


def _check_choice(section: str, name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise LoragenError(f"{section}.{name} must be {' or '.join(choices)} (got {value!r})")


def denoiser_channels_problem(channels: Sequence[Any], num_groups: int) -> str | None:
    """Why `channels` cannot be the denoiser's conv widths, or None if they can (see modules/denoiser.py)."""
    widths = list(channels)
    if not widths or len(widths) % 2 != 1:
        return f"must have an odd length: encoder, bottleneck, mirrored decoder (got {widths})"
    if not all(_is_int(c) and c > 0 for c in widths):
        return f"must be positive integers (got {widths})"
    if widths != widths[::-1]:
        return f"must be a palindrome: each decoder block adds the encoder block of its width (got {widths})"
    if any(c % num_groups for c in widths):
        return f"must be multiples of {num_groups}, the GroupNorm groups (got {widths})"
    return None


# `loragen refresh`: generated candidates drawn beside the carried-over adapter when the task has validation data.
REFRESH_SAMPLES = 2
# `generate --samples N` and `refresh`: validation examples each candidate is scored on (--select-limit).
SELECT_LIMIT = 50
# `refresh --adapt`: the task's training examples the best candidate is adapted on, the gradient steps of each
# adaptation, and the warm fine-tune's learning rate (the blend refinement keeps generator.refine_learning_rate).
ADAPT_SHOTS = 16
ADAPT_STEPS = 10
ADAPT_LEARNING_RATE = 2e-3
# `generate` warns when the description's best cosine similarity to any training task's descriptions is below
# this (loragen.generator.familiarity). Measured by bench/bench_familiarity.py (bench/results/familiarity.json):
# the 5th percentile of the split's real held-out descriptions, rounded down; it warns on 7% of the held-out
# tasks' descriptions (mostly the never-seen pronunciation family), 1% of the seen tasks' held-out wordings,
# and on all 22 nonsense and off-domain requests (the highest of which scores 0.396).
FAMILIARITY_THRESHOLD = 0.43

@dataclass
class RegistryConfig:
    home: str = field(default="~/.loragen", metadata={"help": "where the database and the blob store live"})
    url: str = field(default="", metadata={"help": "SQLAlchemy URL; empty means sqlite:///<home>/registry.db"})
    gc_grace_seconds: int = field(default=3600, metadata={
        "help": "gc keeps unreferenced blobs written less than this long ago (a writer may be about to register them)"})

    def __post_init__(self) -> None:
        if not self.home:
            raise LoragenError("registry.home must not be empty")
        if self.gc_grace_seconds < 0:
            raise LoragenError(f"registry.gc_grace_seconds must be >= 0 (got {self.gc_grace_seconds})")

    @property
    def home_path(self) -> Path:
        return Path(os.path.expanduser(self.home)).resolve()

    @property
    def database_url(self) -> str:
        return self.url or f"sqlite:///{self.home_path / 'registry.db'}"


@dataclass
class LoraConfig:
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout while fine-tuning"})
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_ARCHITECTURE.lora_targets),
                                      metadata={"help": "module names that get a LoRA"})

    def __post_init__(self) -> None:
        _check_positive_ints("lora", self, ("r", "alpha"))
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise LoragenError(f"lora.dropout must be in [0, 1) (got {self.dropout!r})")
        if not self.target_modules:
            raise LoragenError("lora.target_modules must name at least one module")
        if not all(isinstance(name, str) and name for name in self.target_modules):
            raise LoragenError(f"lora.target_modules must be module names (got {self.target_modules!r})")


@dataclass
class FinetuneConfig:
    steps: int = field(default=300, metadata={"help": "optimizer steps per fine-tuning run"})
    batch_size: int = field(default=8, metadata={"help": "examples per step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    checkpoints: int = field(default=5, metadata={"help": "how many of the last checkpoints to register"})
    checkpoint_every: int = field(default=20, metadata={"help": "steps between the last checkpoints"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        _check_positive_ints("finetune", self, ("steps", "batch_size", "checkpoints", "checkpoint_every"))
        _check_positive_number("finetune", "learning_rate", self.learning_rate)
        _check_seed("finetune", self.seed)


@dataclass
class EvalConfig:
    limit: int = field(default=0, metadata={"help": "examples per task; 0 means the whole test split"})
    batch_size: int = field(default=16, metadata={"help": "lm-eval batch size"})

    def __post_init__(self) -> None:
        if not _is_int(self.limit) or self.limit < 0:
            raise LoragenError(f"eval.limit must be >= 0 (got {self.limit!r}; 0 means the whole test split)")
        _check_positive_ints("eval", self, ("batch_size",))


@dataclass
class GeneratorNetworkSettings:
    """What the generator is: its network's sizes, and how adapters are put to it (anchor, per-adapter states).

    `generator_config_from_settings` (loragen/generator/model.py) copies these into the network's
    GeneratorConfig by name. RPG's sizes (d_model 4096, prototype 1024, channels 32-64) are GPU-sized;
    these fit a 2-core CPU.
    """

    representation: str = field(default="library", metadata={
        "help": "library: coefficients over the training adapters per slot (exact at a one-hot, no gauge); "
                "raw: the adapter's A/B values as tokens (the first design)"})
    key_dim: int = field(default=64, metadata={"help": "library: width of the slot-to-adapter affinities"})
    head_hidden: int = field(default=64, metadata={"help": "library: the coefficient denoiser's MLP width"})
    token_size: int = field(default=1024, metadata={"help": "raw: LoRA values per token (RPG: 1024-16384)"})
    d_model: int = field(default=128, metadata={"help": "Mamba width, even (RPG: 4096)"})
    n_layers: int = field(default=1, metadata={"help": "Mamba blocks"})
    d_state: int = field(default=16, metadata={"help": "SSM state size (RPG: 64)"})
    prototype_dim: int = field(default=1024, metadata={"help": "prototype size per token (RPG: 1024)"})
    denoiser_channels: list[int] = field(default_factory=lambda: [8, 16, 8],
                                         metadata={"help": "per-token conv U-Net widths: an odd-length palindrome "
                                                           f"of multiples of {DENOISER_NORM_GROUPS} (RPG: 32,48,64,48,32)"})
    anchor: bool = field(default=True, metadata={"help": "tokenize the residual from the mean training adapter"})
    permutation_states: bool = field(default=False, metadata={"help": "learn one state per training adapter (RPG)"})
    memory_slots: int = field(default=16, metadata={"help": "per-token prototype tables mixed by the condition (0: off)"})
    memory_code_dim: int = field(default=0, metadata={
        "help": "> 0: factorised memory, a per-token code of this width times per-slot maps (size linear in the "
                "adapter with a small constant); 0: a full table per slot"})
    direct_readout: bool = field(default=True, metadata={"help": "time-gated linear path prototype -> denoiser output"})

    def __post_init__(self) -> None:
        _check_choice("generator", "representation", self.representation, REPRESENTATIONS)
        _check_positive_ints("generator", self, ("token_size", "d_model", "n_layers", "d_state", "prototype_dim",
                                                 "key_dim", "head_hidden"))
        if self.d_model % 2:
            raise LoragenError(f"generator.d_model must be even: the position code has sine and cosine halves "
                               f"(got {self.d_model})")
        problem = denoiser_channels_problem(self.denoiser_channels, DENOISER_NORM_GROUPS)
        if problem:
            raise LoragenError(f"generator.denoiser_channels {problem}")
        _check_bools("generator", self, ("anchor", "permutation_states", "direct_readout"))
        if not _is_int(self.memory_slots) or self.memory_slots < 0:
            raise LoragenError(f"generator.memory_slots must be >= 0 (got {self.memory_slots!r})")
        if not _is_int(self.memory_code_dim) or self.memory_code_dim < 0:
            raise LoragenError(f"generator.memory_code_dim must be >= 0 (got {self.memory_code_dim!r})")


@dataclass
class GeneratorTrainingSettings:
    """How the generator is trained on the diffusion loss (and what its denoiser learns to predict)."""

    steps: int = field(default=800, metadata={"help": "training steps"})
    batch_size: int = field(default=4, metadata={"help": "adapters per step"})
    tokens_per_step: int = field(default=512, metadata={"help": "tokens the loss sees per step (bounds memory)"})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate"})
    checkpoint_every: int = field(default=100, metadata={"help": "steps between resumable checkpoints"})
    seed: int = field(default=0, metadata={"help": "training seed"})
    prediction_type: str = field(default="sample", metadata={"help": "what the denoiser predicts: "
                                                                     + " or ".join(PREDICTION_TYPES)})
    # 1.0 measured best on the tasks a generator is for, the ones the registry lacks (bench_generalization, 24
    # held-out tasks: 0.235 at 1.0, 0.181 at 0.5, 0.196 at 0). It costs the seen tasks (0.124 against 0.214), whose
    # own adapters the registry already holds; the text encoder cannot tell a known task reworded from a new sibling
    # (a seen task's held-out wording is nearest its own task for 27 of 99), so no gate by description picks lookup.
    leave_one_out: float = field(default=1.0, metadata={
        "help": "library: share of training rows whose own task's adapters are masked out of the library, so the "
                "generator learns to compose neighbours (0: always look up; 1: always compose)"})
    # "version" for a generator that refreshes seen tasks on new versions (bench_refresh): masking the task taught
    # it never to use the task's own adapters, so its refresh draws were other tasks' blends (BENCHMARKS.md, issue 21).
    leave_out: str = field(default="task", metadata={
        "help": "library: what a leave_one_out row masks: " + " or ".join(LEAVE_OUT) + " (its own task's adapters, "
                "for tasks the registry lacks; every adapter of its own base version, for refresh)"})

    def __post_init__(self) -> None:
        _check_positive_ints("generator", self, ("steps", "batch_size", "tokens_per_step", "checkpoint_every"))
        _check_positive_number("generator", "learning_rate", self.learning_rate)
        _check_seed("generator", self.seed)
        _check_choice("generator", "prediction_type", self.prediction_type, PREDICTION_TYPES)
        if not _is_number(self.leave_one_out) or not 0.0 <= self.leave_one_out <= 1.0:
            raise LoragenError(f"generator.leave_one_out must be in [0, 1] (got {self.leave_one_out!r})")
        _check_choice("generator", "leave_out", self.leave_out, LEAVE_OUT)


@dataclass
class GeneratorSamplingSettings:
    """How an adapter is drawn from a trained generator (`loragen generate`, `loragen refresh`)."""

    sample_method: str = field(default="ddim", metadata={"help": " or ".join(SAMPLING_METHODS)})
    sample_steps: int = field(default=10, metadata={"help": f"DDIM steps, at most {DDPM_TRAIN_TIMESTEPS} "
                                                            f"(DDPM always runs all {DDPM_TRAIN_TIMESTEPS})"})
    eta: float = field(default=0.0, metadata={"help": "DDIM eta (0: deterministic given the seed)"})
    # Adam moves each library weight by at most about the step per step: 15 x 0.02 bounds the fit to ~0.3 of an
    # adapter's weight, a nudge of the generated blend. 20 x 0.05 overfit 5 examples in the main job (2026-12-02:
    # held-back loss 0.110 -> 0.197, so the unrefined blend was kept).
    refine_steps: int = field(default=15, metadata={"help": "`generate --examples`: gradient steps of the few-shot fit"})
    refine_learning_rate: float = field(default=0.02, metadata={"help": "`generate --examples`: the fit's Adam step"})
    refine_held_back: int = field(default=16, metadata={
        "help": "`generate --examples`: examples held back from the fit to check it (the refined adapter is kept "
                "only if their loss goes down)"})

    def __post_init__(self) -> None:
        _check_positive_ints("generator", self, ("sample_steps", "refine_steps", "refine_held_back"))
        _check_positive_number("generator", "refine_learning_rate", self.refine_learning_rate)
        _check_choice("generator", "sample_method", self.sample_method, SAMPLING_METHODS)
        if self.sample_steps > DDPM_TRAIN_TIMESTEPS:
            raise LoragenError(f"generator.sample_steps must be at most {DDPM_TRAIN_TIMESTEPS}, the noise schedule's "
                               f"length (got {self.sample_steps})")
        if not _is_number(self.eta) or not 0.0 <= self.eta <= 1.0:
            raise LoragenError(f"generator.eta must be in [0, 1] (got {self.eta!r})")

    @property
    def steps_per_sample(self) -> int:
        """Denoiser passes per generated adapter: DDIM runs `sample_steps`, DDPM the whole schedule."""
        return self.sample_steps if self.sample_method == "ddim" else DDPM_TRAIN_TIMESTEPS


@dataclass
class GeneratorTaskLossSettings:
    """The task loss beside the diffusion loss (loragen/generator/task_loss.py); off by default."""

    task_loss_weight: float = field(default=0.0, metadata={
        "help": "weight of the task loss beside the diffusion loss: the generator's predicted adapter applied to the "
                "base, next-token loss on the task's training answers (0: off; needs bundled tasks' data)"})
    task_loss_every: int = field(default=1, metadata={"help": "steps between task-loss steps"})
    task_examples_per_step: int = field(default=8, metadata={"help": "training examples per task in a task-loss step"})
    task_adapters_per_step: int = field(default=1, metadata={
        "help": "library generator: training adapters whose tasks a task-loss step scores (the raw generator uses "
                "batch_size)"})
    task_descriptions_per_step: int = field(default=2, metadata={
        "help": "descriptions sampled per task in a task-loss step, each generating its own adapter"})
    task_loss_timestep: str = field(default="sampled", metadata={
        "help": "where the task loss reads the predicted adapter: " + " or ".join(TASK_LOSS_TIMESTEPS)
                + " (noise: from pure noise, the first sampling step; sampled: the task's adapter noised at a random "
                  "timestep)"})

    def __post_init__(self) -> None:
        if not _is_number(self.task_loss_weight) or self.task_loss_weight < 0:  # _is_number: finite
            raise LoragenError(f"generator.task_loss_weight must be a number >= 0 (got {self.task_loss_weight!r})")
        _check_positive_ints("generator", self, ("task_loss_every", "task_examples_per_step", "task_adapters_per_step",
                                                 "task_descriptions_per_step"))
        _check_choice("generator", "task_loss_timestep", self.task_loss_timestep, TASK_LOSS_TIMESTEPS)


GENERATOR_SECTIONS = (GeneratorNetworkSettings, GeneratorTrainingSettings, GeneratorSamplingSettings,
                      GeneratorTaskLossSettings)
_Section = TypeVar("_Section")


@dataclass
class GeneratorSettings(GeneratorTaskLossSettings, GeneratorSamplingSettings, GeneratorTrainingSettings,
                        GeneratorNetworkSettings):
    """The generator's knobs: the four sections' fields side by side, in GENERATOR_SECTIONS' order (a dataclass
    takes its bases' fields last base first). This flat form is loragen.toml's [generator] table, what the flags
    override (dataclasses.replace) and what run folders and checkpoints record (asdict). `network`, `training`,
    `sampling` and `task_loss` give a copy of one section, for code that needs only that. The only place these
    defaults live.
    """

    def __post_init__(self) -> None:
        for section in GENERATOR_SECTIONS:
            section.__post_init__(self)

    def _section(self, section: type[_Section]) -> _Section:
        return section(**{f.name: getattr(self, f.name) for f in fields(section)})

    @property
    def network(self) -> GeneratorNetworkSettings:
        return self._section(GeneratorNetworkSettings)

    @property
    def training(self) -> GeneratorTrainingSettings:
        return self._section(GeneratorTrainingSettings)

    @property
    def sampling(self) -> GeneratorSamplingSettings:
        return self._section(GeneratorSamplingSettings)

    @property
    def task_loss(self) -> GeneratorTaskLossSettings:
        return self._section(GeneratorTaskLossSettings)


@dataclass
class Settings:
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)


def _merge(target: Any, values: dict[str, Any], source: str, section: str = "") -> None:
    """Overwrite dataclass fields from a (nested) dict, refusing unknown keys and wrong types.

    Errors name the setting as a user writes it (`generator.d_model`) and the file it came from.
    """
    known = {f.name: f for f in fields(target)}
    for key, value in values.items():
        name = f"{section}.{key}" if section else key
        if key not in known:
            raise LoragenError(f"{source}: unknown setting '{name}' (known: {', '.join(sorted(known))})")
        current = getattr(target, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise LoragenError(f"{source}: [{name}] must be a table")
            _merge(current, value, source, name)
            continue
        same_type = isinstance(value, bool) if isinstance(current, bool) else (
            not isinstance(value, bool) and (isinstance(value, type(current))
                                             or (isinstance(current, float) and isinstance(value, int))))
        if not same_type:
            raise LoragenError(f"{source}: {name} must be {type(current).__name__}, got {value!r}")
        setattr(target, key, value)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise LoragenError(f"{path}: not valid TOML ({err})") from None
    except UnicodeDecodeError as err:
        raise LoragenError(f"{path}: not valid TOML (not UTF-8 text: byte {err.start})") from None


def _revalidate(settings: Settings) -> None:
    for section in fields(settings):
        getattr(settings, section.name).__post_init__()


def load_settings(home: str | None = None, cwd: Path | None = None) -> Settings:
    """Resolve settings: defaults < <home>/loragen.toml < ./loragen.toml < env < explicit `home`."""
    settings = Settings()
    env_home = os.environ.get("LORAGEN_HOME")
    chosen_home = home or env_home
    # The home decides where the user file is, so look at it first.
    project_file = (cwd or Path.cwd()) / "loragen.toml"
    project_values = _read_toml(project_file) if project_file.is_file() else {}
    if not chosen_home:
        registry_table = project_values.get("registry", {})
        # Read before the file is checked (_merge below refuses a `registry = 5` or a `home = 5` in one line).
        if isinstance(registry_table, dict) and isinstance(registry_table.get("home"), str):
            chosen_home = registry_table["home"]
    user_file = RegistryConfig(home=chosen_home or RegistryConfig.home).home_path / "loragen.toml"
    if user_file.is_file():
        _merge(settings, _read_toml(user_file), str(user_file))
    if project_values:
        _merge(settings, project_values, str(project_file))
    if os.environ.get("LORAGEN_DATABASE_URL"):
        settings.registry.url = os.environ["LORAGEN_DATABASE_URL"]
    if chosen_home:
        settings.registry.home = chosen_home
    _revalidate(settings)
    return settings
