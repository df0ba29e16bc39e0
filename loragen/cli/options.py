"""Option values without typer's pydantic round trip.

typer 0.29 runs every option of the command it invokes, given or not, through a pydantic
TypeAdapter. Importing pydantic and building the adapters cost about 0.2 s of CPU a command
on this project's 2-core machines: more than everything else `loragen list` does, with
10,000 adapters. Plain `str`, `int` and `bool` options need only str(), int() and the
usual true/false words, so they get that; options with bounds, parsers, paths, lists or
choices keep typer's coercion. This leans on typer internals: where they differ (an import,
an attribute or a constructor that is not there), typer's own path runs unchanged.
tests/test_registry_cli.py checks that `loragen list` imports no pydantic and that bad
values are still refused.
"""

from __future__ import annotations

from typing import Any

TRUTH = {"1": True, "true": True, "t": True, "yes": True, "y": True, "on": True,
         "0": False, "false": False, "f": False, "no": False, "n": False, "off": False, "": False}


def coerce_plain_options_without_pydantic() -> None:
    try:
        from typer._click.exceptions import BadParameter
        from typer._coercion import RuntimeParam
        from typer.core import _TyperParameter
    except ImportError:
        return
    typers_runtime_param = getattr(_TyperParameter, "get_runtime_param", None)
    if typers_runtime_param is None:
        return

    class PlainRuntimeParam(RuntimeParam):
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            kind = self.annotation
            if kind is str:
                return value if isinstance(value, str) else str(value)
            if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
                return value
            text = str(value).strip()
            if kind is bool and text.lower() in TRUTH:
                return TRUTH[text.lower()]
            if kind is int:
                try:
                    return int(text)
                except ValueError:
                    pass
            raise BadParameter(f"'{value}' is not a valid {kind.__name__}", ctx=ctx, param=param)

    def plain_runtime_param(parameter: Any) -> Any:
        """A PlainRuntimeParam for a plain str/int/bool option not yet coerced; None for anything else."""
        try:
            descriptor, info = parameter.type_descriptor, parameter.type_descriptor.parameter_info
            if (parameter._runtime_param is None and descriptor.annotation in (str, int, bool)
                    and descriptor.file_annotation is None and info.parser is None
                    and info.min is None and info.max is None and not info.clamp):
                return PlainRuntimeParam(parameter_info=info, annotation=descriptor.annotation)
        except (AttributeError, TypeError):
            pass
        return None

    def get_runtime_param(self: Any) -> Any:
        plain = plain_runtime_param(self)
        if plain is not None:
            self._runtime_param = plain
        return typers_runtime_param(self)

    _TyperParameter.get_runtime_param = get_runtime_param


def split_names(value: str | None, option: str) -> list[str] | None:
    """The names of a comma-separated option, or None when it is not given. One that names nothing is refused:
    `--tasks ",,,"` must not fall back to what leaving the option out means (every task)."""
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        import typer

        raise typer.BadParameter(f"{option} names nothing (got {value!r}): give comma-separated names, or leave it out")
    return names
