"""Point huggingface_hub / transformers / datasets at another endpoint and cache, in-process.

huggingface_hub and datasets read their environment variables once, at import time, into module constants
(``huggingface_hub.constants.ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` ...,
``datasets.config.HF_ENDPOINT``, ``HUB_DATASETS_URL``, ``HF_DATASETS_CACHE`` ...). Setting ``os.environ`` after
import is therefore not enough. :func:`hf_env` sets the environment *and* patches those constants (and the
module-level ``HfApi`` instance, and fsspec's cached ``HfFileSystem`` instances), then restores everything.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

__all__ = ["hf_env", "DUMMY_TOKEN"]

DUMMY_TOKEN = "hf_localhubdummytoken0000000000000000"
_MISSING = object()


def _env_for(endpoint: str | None, hf_home: Path, token: str | None, offline: bool) -> dict[str, str | None]:
    env: dict[str, str | None] = {
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_DATASETS_CACHE": str(hf_home / "datasets"),
        "HF_MODULES_CACHE": str(hf_home / "modules"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        "HF_TOKEN": token,
        "HUGGING_FACE_HUB_TOKEN": None,
        "HUGGINGFACE_CO_STAGING": None,
        "HUGGINGFACE_HUB_CACHE": None,
        "HF_HUB_OFFLINE": "1" if offline else None,
        "TRANSFORMERS_OFFLINE": "1" if offline else None,
        "HF_DATASETS_OFFLINE": "1" if offline else None,
        "HF_DATASETS_DOWNLOADED_DATASETS_PATH": None,
        "HF_DATASETS_EXTRACTED_DATASETS_PATH": None,
    }
    if endpoint is not None:
        env["HF_ENDPOINT"] = endpoint
    return env


@contextlib.contextmanager
def hf_env(
    endpoint: str | None,
    hf_home: str | os.PathLike,
    *,
    token: str | None = DUMMY_TOKEN,
    offline: bool = False,
) -> Iterator[dict[str, str]]:
    """Temporarily point the HF libraries at ``endpoint`` with a fresh cache under ``hf_home``.

    Sets ``HF_ENDPOINT`` (when ``endpoint`` is given), ``HF_HUB_DISABLE_XET=1``, ``HF_HUB_DISABLE_TELEMETRY=1``,
    ``HF_TOKEN`` (a dummy by default; ``None`` unsets it), ``HF_HOME``/``HF_HUB_CACHE``/``HF_DATASETS_CACHE`` under
    ``hf_home``, and ``HF_HUB_OFFLINE`` when ``offline``; patches the import-time constants of huggingface_hub,
    datasets and transformers (those already imported; later imports read the environment). Yields the env dict.
    """
    hf_home = Path(hf_home).resolve()
    hf_home.mkdir(parents=True, exist_ok=True)
    env = _env_for(endpoint, hf_home, token, offline)

    saved_env = {k: os.environ.get(k) for k in env}
    saved_attrs: list[tuple[Any, str, Any]] = []

    def setattr_saved(obj: Any, name: str, value: Any) -> None:
        saved_attrs.append((obj, name, getattr(obj, name, _MISSING)))
        setattr(obj, name, value)

    try:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _patch_huggingface_hub(setattr_saved, endpoint, hf_home, offline)
        _patch_datasets(setattr_saved, hf_home, offline)
        _patch_transformers(setattr_saved, hf_home)
        _clear_fs_caches()
        yield {k: v for k, v in env.items() if v is not None}
    finally:
        for obj, name, old in reversed(saved_attrs):
            if old is _MISSING:
                with contextlib.suppress(AttributeError):
                    delattr(obj, name)
            else:
                setattr(obj, name, old)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _clear_fs_caches()


def _patch_huggingface_hub(setattr_saved, endpoint: str | None, hf_home: Path, offline: bool) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    if endpoint is not None:
        endpoint = endpoint.rstrip("/")
        setattr_saved(constants, "ENDPOINT", endpoint)
        setattr_saved(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        host = urlsplit(endpoint).hostname
        if host and hasattr(constants, "HF_URL_HOSTS"):
            setattr_saved(constants, "HF_URL_HOSTS", frozenset(constants.HF_URL_HOSTS | {host.lower()}))
        # The module-level HfApi instance behind `huggingface_hub.create_repo`, `upload_file`, ... captured the
        # endpoint when it was built.
        hf_api_mod = sys.modules.get("huggingface_hub.hf_api")
        if hf_api_mod is not None and hasattr(hf_api_mod, "api"):
            setattr_saved(hf_api_mod.api, "endpoint", endpoint)
    values = {
        "HF_HOME": str(hf_home),
        "HUGGINGFACE_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HUGGINGFACE_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(hf_home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(hf_home / ".check_for_skill_update_done"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": bool(offline),
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
    }
    for name, value in values.items():
        if hasattr(constants, name):
            setattr_saved(constants, name, value)
    del huggingface_hub


def _patch_datasets(setattr_saved, hf_home: Path, offline: bool) -> None:
    config = sys.modules.get("datasets.config")
    if config is None:
        return
    endpoint = os.environ.get("HF_ENDPOINT", getattr(config, "HF_ENDPOINT", "https://huggingface.co"))
    downloads = hf_home / "datasets" / "downloads"
    values = {
        "HF_ENDPOINT": endpoint,
        "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_CACHE_HOME": str(hf_home),
        "HF_DATASETS_CACHE": hf_home / "datasets",
        "HF_MODULES_CACHE": hf_home / "modules",
        "DEFAULT_DOWNLOADED_DATASETS_PATH": str(downloads),
        "DOWNLOADED_DATASETS_PATH": downloads,
        "DEFAULT_EXTRACTED_DATASETS_PATH": str(downloads / "extracted"),
        "EXTRACTED_DATASETS_PATH": downloads / "extracted",
        "HF_HUB_OFFLINE": bool(offline),
        "HF_DATASETS_OFFLINE": bool(offline),
        "HF_UPDATE_DOWNLOAD_COUNTS": False,
    }
    for name, value in values.items():
        if hasattr(config, name):
            setattr_saved(config, name, value)


def _patch_transformers(setattr_saved, hf_home: Path) -> None:
    hub = sys.modules.get("transformers.utils.hub")
    if hub is None:
        return
    if hasattr(hub, "HF_MODULES_CACHE"):
        setattr_saved(hub, "HF_MODULES_CACHE", str(hf_home / "modules"))
    if hasattr(hub, "_hf_api"):
        # transformers caches one HfApi (built with the endpoint of the time): drop it, a new one is made on demand.
        setattr_saved(hub, "_hf_api", None)


def _clear_fs_caches() -> None:
    """fsspec caches filesystem instances (with their endpoint); drop them so new ones see the patched endpoint."""
    mod = sys.modules.get("huggingface_hub.hf_file_system")
    if mod is not None and hasattr(mod, "HfFileSystem"):
        with contextlib.suppress(Exception):
            mod.HfFileSystem.clear_instance_cache()
