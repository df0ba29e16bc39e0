import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own registry home; nothing touches ~/.loragen."""
    home = tmp_path / "home"
    monkeypatch.setenv("LORAGEN_HOME", str(home))
    monkeypatch.delenv("LORAGEN_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    server = os.environ.get("LORAGEN_TEST_POSTGRES_URL")
    if not server:
        yield home
        return
    # The same tests against PostgreSQL: a fresh database per test, dropped afterwards.
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"loragen_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    monkeypatch.setenv("LORAGEN_DATABASE_URL", make_url(server).set(database=name).render_as_string(hide_password=False))
    try:
        yield home
    finally:
        from loragen.cli.context import state

        if state._registry is not None:
            state._registry.engine.dispose()
        state._registry = None
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    from tests.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("bases") / "tiny-v1", seed=0)


@pytest.fixture(scope="session")
def tiny_base_v2(tmp_path_factory) -> Path:
    """Same architecture as tiny_base, other weights: an 'evolved' version."""
    from tests.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("bases") / "tiny-v2", seed=1)


@pytest.fixture
def registered(capsys, tiny_base) -> str:
    """The tiny base registered through the CLI as `tiny`."""
    from tests.helpers import run_cli

    result = run_cli(capsys, "base", "add", "tiny", "--from", tiny_base)
    assert result.code == 0, result.err
    return "tiny"


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, tiny_base) -> Path:
    from tests.tiny import make_lora

    return make_lora(tiny_base, tmp_path_factory.mktemp("adapters") / "a0", seed=0)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny tensors run faster on one thread, and CI shares its 2 cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
