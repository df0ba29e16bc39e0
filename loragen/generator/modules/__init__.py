"""The generator's nn.Modules, each with its config dataclass beside it."""
