"""Settings: dataclasses with defaults, overridden by loragen.toml files and LORAGEN_* variables.

Precedence, strongest first: command-line flag > LORAGEN_* environment variable >
./loragen.toml (the project's) > <home>/loragen.toml (the user's) > defaults here.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from loragen.errors import LoragenError


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
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"],
                                      metadata={"help": "module names that get a LoRA"})

    def __post_init__(self) -> None:
        if self.r <= 0 or self.alpha <= 0:
            raise LoragenError(f"lora.r and lora.alpha must be positive (got r={self.r}, alpha={self.alpha})")
        if not 0.0 <= self.dropout < 1.0:
            raise LoragenError(f"lora.dropout must be in [0, 1) (got {self.dropout})")
        if not self.target_modules:
            raise LoragenError("lora.target_modules must name at least one module")


@dataclass
class FinetuneConfig:
    steps: int = field(default=300, metadata={"help": "optimizer steps per fine-tuning run"})
    batch_size: int = field(default=8, metadata={"help": "examples per step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    checkpoints: int = field(default=5, metadata={"help": "how many of the last checkpoints to register"})
    checkpoint_every: int = field(default=20, metadata={"help": "steps between the last checkpoints"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoints", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise LoragenError(f"finetune.{name} must be positive (got {getattr(self, name)})")
        if self.learning_rate <= 0:
            raise LoragenError(f"finetune.learning_rate must be positive (got {self.learning_rate})")


@dataclass
class EvalConfig:
    limit: int = field(default=0, metadata={"help": "examples per task; 0 means the whole test split"})
    batch_size: int = field(default=16, metadata={"help": "lm-eval batch size"})

    def __post_init__(self) -> None:
        if self.limit < 0 or self.batch_size <= 0:
            raise LoragenError("eval.limit must be >= 0 and eval.batch_size > 0")


@dataclass
class GeneratorSettings:
    """The generator's architecture, training and sampling knobs (see loragen/generator/model.py)."""

    token_size: int = field(default=1024, metadata={"help": "LoRA values per token"})
    d_model: int = field(default=128, metadata={"help": "Mamba width"})
    n_layers: int = field(default=1, metadata={"help": "Mamba blocks"})
    d_state: int = field(default=16, metadata={"help": "SSM state size"})
    prototype_dim: int = field(default=1024, metadata={"help": "prototype size per token"})
    denoiser_channels: list[int] = field(default_factory=lambda: [8, 16, 8],
                                         metadata={"help": "per-token conv U-Net widths"})
    anchor: bool = field(default=True, metadata={"help": "tokenize the residual from the mean training adapter"})
    permutation_states: bool = field(default=False, metadata={"help": "learn one state per training adapter (RPG)"})
    memory_slots: int = field(default=16, metadata={"help": "per-token prototype tables mixed by the condition (0: off)"})
    direct_readout: bool = field(default=True, metadata={"help": "time-gated linear path prototype -> denoiser output"})
    steps: int = field(default=800, metadata={"help": "training steps"})
    batch_size: int = field(default=4, metadata={"help": "adapters per step"})
    tokens_per_step: int = field(default=512, metadata={"help": "tokens the loss sees per step (bounds memory)"})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate"})
    checkpoint_every: int = field(default=100, metadata={"help": "steps between resumable checkpoints"})
    seed: int = field(default=0, metadata={"help": "training seed"})
    prediction_type: str = field(default="sample", metadata={"help": "what the denoiser predicts: sample (x0) or epsilon"})
    sample_method: str = field(default="ddim", metadata={"help": "ddim or ddpm"})
    sample_steps: int = field(default=10, metadata={"help": "DDIM steps (DDPM always uses all 1000)"})
    eta: float = field(default=0.0, metadata={"help": "DDIM eta (0: deterministic given the seed)"})

    def __post_init__(self) -> None:
        for name in ("token_size", "d_model", "n_layers", "d_state", "prototype_dim", "steps", "batch_size",
                     "tokens_per_step", "checkpoint_every", "sample_steps"):
            if getattr(self, name) <= 0:
                raise LoragenError(f"generator.{name} must be positive (got {getattr(self, name)})")
        if self.memory_slots < 0:
            raise LoragenError(f"generator.memory_slots must be >= 0 (got {self.memory_slots})")
        if self.learning_rate <= 0 or not 0.0 <= self.eta <= 1.0:
            raise LoragenError("generator.learning_rate must be positive and generator.eta in [0, 1]")
        if self.prediction_type not in ("sample", "epsilon"):
            raise LoragenError(f"generator.prediction_type must be sample or epsilon (got {self.prediction_type!r})")
        if self.sample_method not in ("ddim", "ddpm"):
            raise LoragenError(f"generator.sample_method must be ddim or ddpm (got {self.sample_method!r})")


@dataclass
class Settings:
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)


def _merge(target: Any, values: dict[str, Any], where: str) -> None:
    """Overwrite dataclass fields from a (nested) dict, refusing unknown keys and wrong types."""
    known = {f.name: f for f in fields(target)}
    for key, value in values.items():
        if key not in known:
            raise LoragenError(f"{where}: unknown setting '{key}' (known: {', '.join(sorted(known))})")
        current = getattr(target, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise LoragenError(f"{where}: [{key}] must be a table")
            _merge(current, value, f"{where} [{key}]")
            continue
        same_type = isinstance(value, bool) if isinstance(current, bool) else (
            not isinstance(value, bool) and (isinstance(value, type(current))
                                             or (isinstance(current, float) and isinstance(value, int))))
        if not same_type:
            raise LoragenError(f"{where}: '{key}' must be {type(current).__name__}, got {value!r}")
        setattr(target, key, value)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise LoragenError(f"{path}: not valid TOML ({err})") from None


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
        chosen_home = project_values.get("registry", {}).get("home")
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
