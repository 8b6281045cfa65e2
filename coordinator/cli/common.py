"""What every command shares: the store location, output formats, and expected errors as exit codes.

Exit codes: 0 done; 2 bad input or usage (message, no traceback); 3 store problem; 4 a run finished but
some of its jobs did not succeed (the summary and report say which and why); 5 no device reachable.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from coordinator.safe_text import clean

if TYPE_CHECKING:
    from coordinator.store.sqlite import Store

EXIT_INPUT = 2
EXIT_STORE = 3
EXIT_JOBS_FAILED = 4
EXIT_NO_DEVICE = 5
F = TypeVar("F", bound=Callable[..., Any])


class ListFormat(str, enum.Enum):
    table = "table"
    json = "json"


class State:
    db: Path | None = None


STATE = State()


def default_db() -> Path:
    home = os.environ.get("EDGEBENCH_HOME")
    if home:
        return Path(home).expanduser() / "edgebench.db"
    import platformdirs

    return Path(platformdirs.user_data_dir("edgebench")) / "edgebench.db"


def fail(message: str, code: int = EXIT_INPUT) -> None:
    """Print `message` (which may quote an agent: its control characters are made visible) and exit."""
    typer.echo(f"edgebench: error: {clean(message)}", err=True)
    raise typer.Exit(code)


@contextmanager
def open_store() -> Iterator[Store]:
    from coordinator.store.sqlite import Store, StoreError

    path = STATE.db or default_db()
    try:
        store = Store(path)
    except StoreError as exc:
        fail(str(exc), EXIT_STORE)
    try:
        yield store
    except StoreError as exc:
        fail(str(exc), EXIT_STORE)
    finally:
        store.close()


def expected_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's input, printed without a traceback."""
    from coordinator.compress.base import RecipeError
    from coordinator.fleet import DeviceConfigError
    from coordinator.runs import RunError

    return (RunError, RecipeError, DeviceConfigError, FileNotFoundError)
