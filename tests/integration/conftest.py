"""The integration tier (subprocesses, multi-host, kill/resume, whole trainings, pipeline runs, benchmarks):
every test under tests/integration is marked slow. `pytest -m "not slow"` is the fast tier."""

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)
