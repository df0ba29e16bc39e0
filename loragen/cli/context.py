"""State shared by every command: settings and the (lazily opened) registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loragen.config import Settings
    from loragen.registry.store import Registry


@dataclass
class AppState:
    home: str | None = None
    _settings: "Settings | None" = field(default=None, repr=False)
    _registry: "Registry | None" = field(default=None, repr=False)

    @property
    def settings(self) -> "Settings":
        if self._settings is None:
            from loragen.config import load_settings

            self._settings = load_settings(home=self.home)
        return self._settings

    @property
    def registry(self) -> "Registry":
        if self._registry is None:
            from loragen.registry.store import Registry

            self._registry = Registry(self.settings.registry)
        return self._registry


state = AppState()
