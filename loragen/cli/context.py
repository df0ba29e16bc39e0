"""State shared by every command: settings and the (lazily opened) registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loragen.config import Settings
    from loragen.registry.store import Registry
    from loragen.registry.views import Views


@dataclass
class AppState:
    home: str | None = None
    _settings: "Settings | None" = field(default=None, repr=False)
    _registry: "Registry | None" = field(default=None, repr=False)
    _views: "Views | None" = field(default=None, repr=False)

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

    @property
    def views(self) -> "Views":
        """The read side for list and show: on a SQLite registry at the schema head, straight on the file
        (no SQLAlchemy or Alembic import); otherwise through the registry, which upgrades the schema first."""
        if self._views is None:
            from loragen.registry.views import open_views

            self._views = open_views(self.settings.registry, lambda: self.registry.views)
        return self._views

    def forget(self) -> None:
        """Drop what one command opened (tests run many commands in one process)."""
        if self._views is not None:
            self._views.close()
        if self._registry is not None:
            self._registry.engine.dispose()
        self._settings = self._registry = self._views = None


state = AppState()
