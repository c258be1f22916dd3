"""pytest plugin: a local Hugging Face Hub per test, and the ``realhub`` marker.

Enable with ``pytest_plugins = ["mbdpo_hub_testing.pytest_plugin"]`` in a conftest.py, or ``-p
mbdpo_hub_testing.pytest_plugin`` on the command line.

Fixtures
--------
``local_hub`` (function scope)
    A fresh :class:`~mbdpo_hub_testing.hub_server.LocalHub` (repos stored under the test's ``tmp_path``), with the
    environment pointed at it for the duration of the test: ``HF_ENDPOINT=<hub.url>``, ``HF_HUB_DISABLE_XET=1``,
    ``HF_HUB_DISABLE_TELEMETRY=1``, ``HF_TOKEN=<dummy>``, ``HF_HOME``/``HF_HUB_CACHE``/``HF_DATASETS_CACHE`` in a
    per-test temp dir, ``HF_HUB_OFFLINE`` unset; import-time constants of huggingface_hub / datasets / transformers
    are patched accordingly (see :mod:`mbdpo_hub_testing.hf_env`). Yields a :class:`LocalHubFixture` with ``url``,
    ``root``, ``hf_home``, ``api`` (an ``HfApi`` bound to the hub), ``env`` (the variables set, e.g. for
    subprocesses), ``new_cache()`` (switch to a fresh empty cache), ``offline_env()`` (env for an offline subprocess
    reading the current cache), and the hub's ``inject_commit_failure`` / ``request_log``.
``local_hub_server`` (session scope)
    One shared server for the session (no env changes). Combine with ``hf_env`` yourself if you want to share it.

Markers
-------
``realhub``: the test talks to the real huggingface.co; skipped unless ``MBDPO_HUB_REAL_TESTS=1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from .hf_env import DUMMY_TOKEN, hf_env
from .hub_server import LocalHub, start_local_hub

REAL_TESTS_ENV = "MBDPO_HUB_REAL_TESTS"

__all__ = ["LocalHubFixture", "local_hub", "local_hub_server", "real_hub_enabled", "requires_real_hub", "REAL_TESTS_ENV"]


def real_hub_enabled() -> bool:
    return os.environ.get(REAL_TESTS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


#: Decorator for tests that need the real Hub: ``@requires_real_hub``.
requires_real_hub = pytest.mark.realhub


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"realhub: needs the real Hugging Face Hub (skipped unless {REAL_TESTS_ENV}=1)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if real_hub_enabled():
        return
    skip = pytest.mark.skip(reason=f"real-Hub test: set {REAL_TESTS_ENV}=1 to run")
    for item in items:
        if "realhub" in item.keywords:
            item.add_marker(skip)


@dataclass
class LocalHubFixture:
    """What the ``local_hub`` fixture yields."""

    hub: LocalHub
    hf_home: Path
    env: dict[str, str]
    _stack: list = field(default_factory=list, repr=False)
    _tmp: Path | None = field(default=None, repr=False)
    _n_caches: int = field(default=0, repr=False)

    @property
    def url(self) -> str:
        return self.hub.url

    @property
    def root(self) -> Path:
        return self.hub.root

    @property
    def token(self) -> str:
        return DUMMY_TOKEN

    @property
    def api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.hub.url, token=DUMMY_TOKEN)

    @property
    def request_log(self) -> list[tuple[str, str, int]]:
        return self.hub.request_log

    def inject_commit_failure(self, stage: str = "after_blobs") -> None:
        self.hub.inject_commit_failure(stage)

    def new_cache(self) -> Path:
        """Switch the process to a brand-new empty HF_HOME (e.g. to prove a download really hits the hub)."""
        self._n_caches += 1
        assert self._tmp is not None
        home = self._tmp / f"hf_home_{self._n_caches}"
        cm = hf_env(self.hub.url, home)
        self.env = cm.__enter__()
        self._stack.append(cm)
        self.hf_home = home
        return home

    def offline_env(self, **extra: str) -> dict[str, str]:
        """A full environment (``os.environ`` + offline HF settings on the current cache) for a subprocess."""
        env = dict(os.environ)
        env.update(self.env)
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        env.update(extra)
        return env

    def _close(self) -> None:
        while self._stack:
            self._stack.pop().__exit__(None, None, None)


@pytest.fixture(scope="session")
def local_hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    """A local hub shared by the whole session (no environment changes)."""
    hub = start_local_hub(tmp_path_factory.mktemp("local_hub_session"))
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def local_hub(tmp_path: Path) -> Iterator[LocalHubFixture]:
    """A fresh local hub for this test, with HF_ENDPOINT / HF_HOME / token / XET settings pointed at it."""
    hub = start_local_hub(tmp_path / "hub_root")
    home = tmp_path / "hf_home"
    cm = hf_env(hub.url, home)
    env = cm.__enter__()
    fx = LocalHubFixture(hub=hub, hf_home=home, env=env, _tmp=tmp_path)
    fx._stack.append(cm)
    try:
        yield fx
    finally:
        fx._close()
        hub.stop()


def pytest_report_header(config: pytest.Config) -> Any:
    return f"mbdpo_hub local hub plugin: realhub tests {'ENABLED' if real_hub_enabled() else 'skipped'}"
