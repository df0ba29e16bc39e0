"""The `loragen` command line: thin commands that parse, call the library and print.

Exit codes: 0 ok, 1 a known error (one line on stderr), 2 bad usage,
3 an unexpected internal error, 130 interrupted. LORAGEN_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from loragen import __version__
from loragen.cli.context import state
from loragen.cli.options import coerce_plain_options_without_pydantic

coerce_plain_options_without_pydantic()  # before any command runs: see loragen/cli/options.py

app = typer.Typer(
    help="Keep base models and LoRA adapters in a registry, and generate adapters from task descriptions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,  # locals may be huge tensors
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"loragen {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    home: Optional[str] = typer.Option(None, "--home", help="Registry folder (default: $LORAGEN_HOME or ~/.loragen)."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More detail on stderr."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    state.home = home
    if not verbose:
        # Third-party progress bars and notices (transformers, peft, lm-eval) drown our own output.
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import warnings

        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


from loragen.cli import adapters as _adapters  # noqa: E402  (registers commands on `app`)
from loragen.cli import base as _base  # noqa: E402
from loragen.cli import evaluate as _evaluate  # noqa: E402
from loragen.cli import generator as _generator  # noqa: E402
from loragen.cli import refresh as _refresh  # noqa: E402
from loragen.cli import task_export as _task_export  # noqa: E402
from loragen.cli import training as _training  # noqa: E402

app.add_typer(_base.app, name="base")
_adapters.register(app)
app.command("finetune")(_training.finetune)
app.command("eval")(_evaluate.eval_cmd)
app.command("train")(_generator.train)
app.command("generate")(_generator.generate)
app.command("refresh")(_refresh.refresh)
app.command("export-task")(_task_export.export_task)


def main(argv: list[str] | None = None) -> None:
    from loragen.errors import LoragenError, quoted

    # OpenMP threads that spin while waiting make torch many times slower when the
    # cores are shared (measured on this project's 2-core machines); sleep instead.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    debug = os.environ.get("LORAGEN_DEBUG") == "1"
    try:
        # Typer handles usage errors (exit 2) and --help itself, then exits.
        app(args=argv, prog_name="loragen")
        code = 0
    except KeyboardInterrupt:
        sys.stderr.write("loragen: interrupted\n")
        code = 130
    except LoragenError as err:
        if debug:
            raise
        sys.stderr.write(f"loragen: error: {err}\n")
        code = 1
    except OSError as err:
        if debug:
            raise
        where = f" ({quoted(err.filename)})" if getattr(err, "filename", None) else ""  # a path can be a pasted essay
        sys.stderr.write(f"loragen: error: {err.strerror or err}{where}\n")
        code = 1
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if debug:
            raise
        sys.stderr.write(f"loragen: internal error: {type(err).__name__}: {err} (LORAGEN_DEBUG=1 shows the traceback)\n")
        code = 3
    sys.exit(code)
