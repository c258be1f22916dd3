"""Publish checkpoints and datasets to the Hub in ONE commit each, with our own card.

``push_pretrained`` is what ``MBDPODiffusionPolicy.push_to_hub`` should call: unlike transformers'
``PreTrainedModel.push_to_hub`` it writes *our* README.md (``library_name: mbdpo-hub``, per-task model-index) rather
than transformers' default card, adds the curve / video / training config / eval results in the same commit, can
target a branch (created from ``main`` if missing) and tags the exact commit it made.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import RevisionNotFoundError
from huggingface_hub.repocard import RepoCard

from .cards import validate_card
from ..utils import HUB_REPO_ID_RE

__all__ = ["push_pretrained", "push_dataset_folder", "ensure_branch"]

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def _check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or not HUB_REPO_ID_RE.match(repo_id):
        raise ValueError(f"repo_id must look like 'namespace/name', got {repo_id!r}")


def _check_path_in_repo(p: str) -> str:
    q = str(p).replace("\\", "/").removeprefix("./")
    if not q or q.startswith("/") or "://" in q or any(part in ("", ".", "..") for part in q.split("/")):
        raise ValueError(f"extra_files: invalid path in repo {p!r} (must be relative, without '..')")
    if q.split("/")[0] == ".git":
        raise ValueError(f"extra_files: cannot write into .git ({p!r})")
    return q


def _card_text(card: RepoCard | str, kind: str, validate: bool) -> str:
    if isinstance(card, RepoCard):
        text = str(card)
    elif isinstance(card, str):
        text = card
    else:
        raise ValueError(f"card must be a huggingface_hub ModelCard/DatasetCard or the README text, got {type(card).__name__}")
    if validate:
        validate_card(text, kind=kind)
    return text


def ensure_branch(api: HfApi, repo_id: str, branch: str | None, *, repo_type: str = "model") -> str:
    """Make sure ``branch`` exists (created from ``main`` if missing). Returns the branch name.

    Raises ``ValueError`` if ``branch`` names a tag or a commit (commits must target a branch).
    """
    if branch is None or branch == "main":
        return "main"
    if not isinstance(branch, str) or not branch.strip() or branch.startswith("refs/") and not branch.startswith(
        "refs/heads/"
    ):
        raise ValueError(f"revision must be a branch name, got {branch!r}")
    if branch.startswith("refs/heads/"):
        branch = branch[len("refs/heads/") :]
    if _SHA_RE.match(branch):
        raise ValueError(f"revision must be a branch name, not a commit sha ({branch})")
    refs = api.list_repo_refs(repo_id, repo_type=repo_type)
    if any(b.name == branch for b in refs.branches):
        return branch
    if any(t.name == branch for t in refs.tags):
        raise ValueError(f"revision {branch!r} is a tag of {repo_id}; push to a branch and pass tag=... instead")
    api.create_branch(repo_id, branch=branch, revision="main", repo_type=repo_type, exist_ok=True)
    return branch


def _tag_commit(api: HfApi, repo_id: str, tag: str, commit: str, message: str | None, repo_type: str) -> None:
    refs = api.list_repo_refs(repo_id, repo_type=repo_type)
    for t in refs.tags:
        if t.name == tag:
            if t.target_commit == commit:
                return
            raise ValueError(
                f"tag {tag!r} already exists on {repo_id} at {t.target_commit}; tags are immutable, pick a new one"
            )
    api.create_tag(repo_id, tag=tag, revision=commit, tag_message=message, repo_type=repo_type)


def push_pretrained(
    model: Any,
    repo_id: str,
    *,
    card: RepoCard | str,
    extra_files: Mapping[str, str | os.PathLike] | None = None,
    revision: str | None = None,
    commit_message: str = "Upload MBDPO checkpoint",
    commit_description: str | None = None,
    private: bool = False,
    tag: str | None = None,
    tag_message: str | None = None,
    token: str | bool | None = None,
    validate: bool = True,
    max_shard_size: str | int | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """Save ``model`` (any ``transformers.PreTrainedModel``) and push it with ``card`` as README.md in ONE commit.

    Args:
        model: the model; ``model.save_pretrained(tmpdir)`` writes ``config.json`` + ``model.safetensors``.
        repo_id: ``namespace/name``; the repo is created if missing (``private`` applies then).
        card: our model card (``build_model_card(...)``) or its text; validated unless ``validate=False``.
        extra_files: ``{path_in_repo: local_path}`` (curve png, video, train_config.yaml, eval_results.json...).
        revision: target branch (default ``main``); created from ``main`` if missing. Tags/commits are refused.
        tag: if given, tag the commit just made (an existing tag on another commit is an error).
        token: Hub token (default: the usual ``HF_TOKEN`` / login lookup).

    Returns:
        The ``huggingface_hub.CommitInfo`` of the upload (``.oid`` is the commit sha). If nothing changed since the
        branch head, no commit is made and the returned ``oid`` is the current head.
    """
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise TypeError(f"model must be a transformers PreTrainedModel (got {type(model).__name__})")
    _check_repo_id(repo_id)
    readme = _card_text(card, "model", validate)
    files: dict[str, Path] = {}
    for path_in_repo, local in (extra_files or {}).items():
        p = _check_path_in_repo(path_in_repo)
        lp = Path(local)
        if not lp.is_file():
            raise FileNotFoundError(f"extra_files[{path_in_repo!r}]: no such file: {lp}")
        if p == "README.md":
            raise ValueError("extra_files may not contain README.md: pass the card instead")
        files[p] = lp
    if tag is not None and (not isinstance(tag, str) or not tag.strip()):
        raise ValueError(f"tag must be a non-empty string, got {tag!r}")

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    branch = ensure_branch(api, repo_id, revision)

    with tempfile.TemporaryDirectory(prefix="mbdpo-push-") as tmp:
        out = Path(tmp)
        kwargs: dict[str, Any] = {}
        if max_shard_size is not None:
            kwargs["max_shard_size"] = max_shard_size
        model.save_pretrained(out, **kwargs)
        written = {str(p.relative_to(out)).replace(os.sep, "/") for p in out.rglob("*") if p.is_file()}
        clash = sorted(written & set(files))
        if clash:
            raise ValueError(f"extra_files would overwrite files written by save_pretrained: {clash}")
        (out / "README.md").write_text(readme, encoding="utf-8")
        for p, lp in files.items():
            dest = out / p
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(lp, dest)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=out,
            revision=branch,
            commit_message=commit_message,
            commit_description=commit_description,
            create_pr=create_pr,
        )
    if tag is not None:
        _tag_commit(api, repo_id, tag, info.oid, tag_message, "model")
    return info


def push_policy(model: Any, repo_id: str, *, card: RepoCard | str | None = None,
                eval_results: dict | None = None, normalized_score: float | None = None,
                extra_files: Mapping[str, str | os.PathLike] | None = None, revision: str | None = None,
                tag: str | None = None, commit_message: str = "Upload MBDPO checkpoint",
                commit_description: str | None = None, private: bool = False, token: str | bool | None = None,
                create_pr: bool = False, tags: list[str] | None = None, max_shard_size: str | int | None = None,
                safe_serialization: bool = True, **card_kwargs: Any) -> CommitInfo:
    """`MBDPODiffusionPolicy.push_to_hub`: build our model card (unless `card` is given; a model with no
    evaluation yet gets a card without results) and push in one commit. transformers' arguments `create_pr`,
    `tags` (added to the card's tags), `max_shard_size`, `commit_description` work; `safe_serialization=False`
    is refused (weights are always safetensors)."""
    if not safe_serialization:
        raise ValueError("safe_serialization=False is refused: mbdpo-hub checkpoints are always safetensors")
    if card is None:
        from .cards import build_model_card

        if tags:
            card_kwargs["extra_tags"] = list(card_kwargs.get("extra_tags") or []) + list(tags)
        card = build_model_card(repo_id=repo_id, config_dict=model.config.to_dict(), eval_results=eval_results,
                                normalized_score=normalized_score, revision=tag, **card_kwargs)
    return push_pretrained(model, repo_id, card=card, extra_files=extra_files, revision=revision, tag=tag,
                           commit_message=commit_message, commit_description=commit_description, private=private,
                           token=token, max_shard_size=max_shard_size, create_pr=create_pr)


def push_dataset_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    card: RepoCard | str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload MBDPO dataset",
    commit_description: str | None = None,
    private: bool = False,
    tag: str | None = None,
    tag_message: str | None = None,
    token: str | bool | None = None,
    delete_stale: bool = True,
    validate: bool = True,
) -> CommitInfo:
    """Push a dataset folder (``data/*.parquet`` shards + ``meta/``) and its card to a dataset repo in ONE commit.

    ``card`` (``build_dataset_card(...)`` or text) becomes README.md; if ``None`` the folder's own README.md is used
    (it must exist). With ``delete_stale`` (default), files under the folder's top-level directories (e.g. an old
    ``data/shard-00007.parquet``) that exist on the branch but not locally are deleted in the same commit, so a
    re-push with fewer shards does not leave stale ones behind. The folder is never modified.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    _check_repo_id(repo_id)
    local = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    rel = {str(p.relative_to(root)).replace(os.sep, "/"): p for p in local}
    if not any(r.endswith(".parquet") for r in rel):
        raise ValueError(f"{root} holds no .parquet shard")
    if card is None:
        if "README.md" not in rel:
            raise ValueError(f"no card given and {root} has no README.md")
        readme = _card_text(rel.pop("README.md").read_text(encoding="utf-8"), "dataset", validate)
    else:
        rel.pop("README.md", None)
        readme = _card_text(card, "dataset", validate)

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    branch = ensure_branch(api, repo_id, revision, repo_type="dataset")

    ops: list[Any] = [CommitOperationAdd(path_in_repo=r, path_or_fileobj=str(p)) for r, p in rel.items()]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=readme.encode("utf-8")))
    if delete_stale:
        top_dirs = {r.split("/")[0] for r in rel if "/" in r}
        try:
            remote = api.list_repo_files(repo_id, repo_type="dataset", revision=branch)
        except RevisionNotFoundError:
            remote = []
        for r in remote:
            if "/" in r and r.split("/")[0] in top_dirs and r not in rel:
                ops.append(CommitOperationDelete(path_in_repo=r))
    info = api.create_commit(
        repo_id=repo_id,
        repo_type="dataset",
        operations=ops,
        revision=branch,
        commit_message=commit_message,
        commit_description=commit_description,
    )
    if tag is not None:
        _tag_commit(api, repo_id, tag, info.oid, tag_message, "dataset")
    return info
