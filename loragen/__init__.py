"""loragen: a registry of base models and LoRA adapters that generates adapters from task descriptions."""

__version__ = "0.1.0"
