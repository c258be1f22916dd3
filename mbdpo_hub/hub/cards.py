"""Model and dataset cards for mbdpo_hub checkpoints and datasets.

Cards are rendered with ``huggingface_hub``'s ``ModelCard.from_template`` / ``DatasetCard.from_template`` (Jinja2)
from ``model_cards/model_card_template.md`` and ``model_cards/dataset_card_template.md``.

Model cards follow the Hub's RL convention (cleanrl, sample-factory, huggingface_sb3): ``library_name: mbdpo-hub``,
``pipeline_tag: reinforcement-learning``, and one ``model-index`` result per task with task type
``reinforcement-learning``, dataset name/type = the task id, and metric ``mean_reward`` whose value is the string
``"<mean> +/- <std>"`` (two decimals).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard import RepoCard

from ..utils import HUB_REPO_ID_RE

__all__ = [
    "LIBRARY_NAME",
    "PIPELINE_TAG",
    "BASE_TAGS",
    "DATASET_TAGS",
    "format_mean_std",
    "build_model_card",
    "validate_card",
    "find_template",
]

LIBRARY_NAME = "mbdpo-hub"
PIPELINE_TAG = "reinforcement-learning"
TASK_TYPE = "reinforcement-learning"
BASE_TAGS = [
    "reinforcement-learning",
    "world-model",
    "mbdpo",
    "tdmpc2",
    "dm-control",
    "model-based-rl",
    "diffusion-planning",
]
DATASET_TAGS = ["reinforcement-learning", "world-model", "mbdpo", "tdmpc2", "offline-rl", "dm-control"]
DEFAULT_LICENSE = "mit"
MODEL_TEMPLATE = "model_card_template.md"
DATASET_TEMPLATE = "dataset_card_template.md"
TEMPLATE_DIR_ENV = "MBDPO_HUB_CARD_TEMPLATES"
_RESULTS_START = "<!-- mbdpo-results-start -->"
_RESULTS_END = "<!-- mbdpo-results-end -->"
_MEAN_STD_RE = re.compile(r"^-?\d+(?:\.\d+)? \+/- \d+(?:\.\d+)?$")
_TAG_RE = re.compile(r"[^a-z0-9._/-]+")
_NORMALIZED_SCORE_DATASET = "mbdpo-normalized-score"


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
def _card_tags(base: Iterable[str], extra: Iterable[str] | None, tasks: Iterable[str]) -> list[str]:
    """Base tags, then the caller's, then one tag per task: first occurrence kept, empty ones dropped."""
    tags: list[str] = []
    for t in [*base, *(extra or []), *(_task_tag(name) for name in tasks)]:
        if t and t not in tags:
            tags.append(t)
    return tags


def find_template(name: str) -> Path:
    """Locate a card template: ``$MBDPO_HUB_CARD_TEMPLATES/<name>``, else ``<repo>/model_cards/<name>``, else the
    copy shipped in the package (``mbdpo_hub/model_cards``, a link to ``<repo>/model_cards`` in a checkout)."""
    candidates = []
    if os.environ.get(TEMPLATE_DIR_ENV):
        candidates.append(Path(os.environ[TEMPLATE_DIR_ENV]) / name)
    here = Path(__file__).resolve()
    candidates += [here.parents[2] / "model_cards" / name, here.parents[1] / "model_cards" / name]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"Card template {name!r} not found (looked in: {', '.join(str(c) for c in candidates)}). "
        f"Pass template_path=... or set {TEMPLATE_DIR_ENV} to the folder holding it."
    )


def format_mean_std(mean: float, std: float) -> str:
    """The Hub RL leaderboard format: ``"123.46 +/- 7.80"``."""
    return f"{float(mean):.2f} +/- {float(std):.2f}"


def _finite(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) and not hasattr(x, "__float__"):
        raise ValueError(f"{what} must be a number, got {type(x).__name__} ({x!r})")
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {v}")
    return v


def _check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not HUB_REPO_ID_RE.match(repo_id):
        raise ValueError(f"repo_id must look like 'namespace/name', got {repo_id!r}")
    return repo_id


def _task_tag(task: str) -> str:
    return _TAG_RE.sub("-", str(task).lower()).strip("-")


def _check_relative(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    p = str(path).replace("\\", "/")
    if not p or "://" in p or p.startswith("/") or ".." in p.split("/"):
        raise ValueError(f"{what} must be a path relative to the repo root (e.g. 'eval/curve.png'), got {path!r}")
    return p


def _normalize_eval_results(eval_results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    if eval_results is None or (isinstance(eval_results, Mapping) and not eval_results):
        return {}  # a model with no evaluation yet: a card without results
    if not isinstance(eval_results, Mapping):
        raise ValueError("eval_results must be a dict {task: {'mean_return': ..., 'std_return': ...}}")
    out: dict[str, dict[str, Any]] = {}
    for task, res in eval_results.items():
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"eval_results keys must be task names, got {task!r}")
        if not isinstance(res, Mapping):
            raise ValueError(f"eval_results[{task!r}] must be a dict, got {type(res).__name__}")
        for key in ("mean_return", "std_return"):
            if key not in res:
                raise ValueError(f"eval_results[{task!r}] is missing {key!r}")
        r = dict(res)
        r["mean_return"] = _finite(res["mean_return"], f"eval_results[{task!r}]['mean_return']")
        r["std_return"] = _finite(res["std_return"], f"eval_results[{task!r}]['std_return']")
        if r["std_return"] < 0:
            raise ValueError(f"eval_results[{task!r}]['std_return'] must be >= 0, got {r['std_return']}")
        if res.get("episodes") is not None:
            if isinstance(res["episodes"], bool) or not isinstance(res["episodes"], int) or res["episodes"] <= 0:
                raise ValueError(f"eval_results[{task!r}]['episodes'] must be a positive int, got {res['episodes']!r}")
        if res.get("normalized_score") is not None:
            r["normalized_score"] = _finite(res["normalized_score"], f"eval_results[{task!r}]['normalized_score']")
        out[task] = r
    return out


def _eval_result_objects(
    results: dict[str, dict[str, Any]], normalized_score: float | None
) -> list[EvalResult]:
    objs: list[EvalResult] = []
    for task, r in results.items():
        common = dict(task_type=TASK_TYPE, task_name=TASK_TYPE, dataset_type=task, dataset_name=task)
        objs.append(
            EvalResult(
                **common,
                metric_type="mean_reward",
                metric_name="mean_reward",
                metric_value=format_mean_std(r["mean_return"], r["std_return"]),
            )
        )
        if r.get("normalized_score") is not None:
            objs.append(
                EvalResult(
                    **common,
                    metric_type="normalized_score",
                    metric_name="normalized_score",
                    metric_value=round(r["normalized_score"], 4),
                )
            )
    if normalized_score is not None:
        objs.append(
            EvalResult(
                task_type=TASK_TYPE,
                task_name=TASK_TYPE,
                dataset_type=_NORMALIZED_SCORE_DATASET,
                dataset_name=f"mean over {len(results)} task{'s' if len(results) != 1 else ''}",
                metric_type="normalized_score",
                metric_name="normalized_score",
                metric_value=round(_finite(normalized_score, "normalized_score"), 4),
            )
        )
    return objs


def _fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _results_table(results: dict[str, dict[str, Any]], normalized_score: float | None) -> str:
    if not results:
        return "No evaluation results yet."
    has_norm = any(r.get("normalized_score") is not None for r in results.values())
    has_eps = any(r.get("episodes") is not None for r in results.values())
    extra_keys: list[str] = []
    for r in results.values():  # e.g. success_rate, mean_length: numeric extras become columns
        for k, v in r.items():
            if (
                k not in ("mean_return", "std_return", "episodes", "normalized_score", "returns")
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
                and k not in extra_keys
            ):
                extra_keys.append(k)
    head = ["task", "mean return", "std"] + (["episodes"] if has_eps else []) + (
        ["normalized score"] if has_norm else []
    ) + extra_keys
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for task, r in results.items():
        row = [f"`{task}`", f"{r['mean_return']:.2f}", f"{r['std_return']:.2f}"]
        if has_eps:
            row.append(_fmt(r.get("episodes")))
        if has_norm:
            row.append(_fmt(r.get("normalized_score"), 3))
        row += [_fmt(r.get(k), 3) for k in extra_keys]
        lines.append("| " + " | ".join(row) + " |")
    if normalized_score is not None:
        lines += ["", f"**Normalized score (mean over {len(results)} tasks): {float(normalized_score):.3f}**"]
    return "\n".join(lines)


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _read_text_arg(value: str | os.PathLike | None, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        p = Path(value)
        if not p.is_file():
            raise ValueError(f"{what}: file not found: {p}")
        return p.read_text(encoding="utf-8")
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string (the content) or a pathlib.Path, got {type(value).__name__}")
    return value


def _as_list(x: str | Sequence[str] | None, what: str) -> list[str] | None:
    if x is None:
        return None
    if isinstance(x, str):
        return [x]
    if not all(isinstance(i, str) and i for i in x):
        raise ValueError(f"{what} must be a string or a list of non-empty strings, got {x!r}")
    return list(x)


def _library_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("mbdpo-hub")
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------------------------------
# model card
# ---------------------------------------------------------------------------------------------------------------------
def build_model_card(
    *,
    repo_id: str,
    config_dict: Mapping[str, Any],
    eval_results: Mapping[str, Mapping[str, Any]] | None = None,
    normalized_score: float | None = None,
    base_model: str | None = None,
    base_revision: str | None = None,
    datasets: str | Sequence[str] | None = None,
    command: str | None = None,
    train_config_yaml: str | os.PathLike | None = None,
    curve_path: str | None = None,
    video_path: str | None = None,
    notes: str | None = None,
    license: str = DEFAULT_LICENSE,
    extra_tags: Sequence[str] | None = None,
    summary: str | None = None,
    revision: str | None = None,
    template_path: str | os.PathLike | None = None,
    usage_task: str | None = None,
) -> ModelCard:
    """Build the model card (README.md) of an MBDPO checkpoint.

    Args:
        repo_id: ``namespace/name`` of the model repo.
        config_dict: the model config (``model.config.to_dict()``); its ``tasks`` list (if any) adds task tags.
        eval_results: ``{task: {"mean_return": float, "std_return": float, "episodes": int, ...}}``; optional
            per-task ``normalized_score``; other numeric entries (e.g. ``success_rate``) become table columns.
        normalized_score: aggregate normalized score over all tasks (reported in the table and model-index).
        base_model / base_revision: the checkpoint this one was fine-tuned from (and its exact commit sha).
        datasets: dataset repo id(s) used for training.
        command: the exact command that produced the checkpoint.
        train_config_yaml: the training config (YAML text, or a ``pathlib.Path`` to read).
        curve_path / video_path: repo-relative paths of the learning-curve image and the evaluation video.
        notes: free markdown appended in a "Notes" section.
        revision: if given, the usage snippet loads this revision (e.g. the tag being published).
        usage_task: the task the usage snippet acts on (default the first task; a fine-tuned card names its task).
        template_path: override ``model_cards/model_card_template.md``.
    """
    _check_repo_id(repo_id)
    if not isinstance(config_dict, Mapping):
        raise ValueError(f"config_dict must be a dict (e.g. model.config.to_dict()), got {type(config_dict).__name__}")
    results = _normalize_eval_results(eval_results)
    if base_revision is not None and base_model is None:
        raise ValueError("base_revision given without base_model")
    if base_model is not None:
        _check_repo_id(base_model)
    datasets_l = _as_list(datasets, "datasets")
    for d in datasets_l or []:
        _check_repo_id(d)
    curve_path = _check_relative(curve_path, "curve_path")
    video_path = _check_relative(video_path, "video_path")
    train_yaml = _read_text_arg(train_config_yaml, "train_config_yaml")
    if not isinstance(license, str) or not license:
        raise ValueError("license must be a non-empty string (a Hub license id such as 'mit' or 'apache-2.0')")

    cfg = _to_jsonable(dict(config_dict))
    cfg_tasks = cfg.get("tasks") if isinstance(cfg.get("tasks"), list) else None
    tasks = list(cfg_tasks) if cfg_tasks else list(results)
    for t in results:
        if t not in tasks:
            tasks.append(t)

    tags = _card_tags(BASE_TAGS, extra_tags, tasks)
    model_name = repo_id.split("/")[-1]
    card_data = ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        license=license,
        tags=tags,
        datasets=datasets_l,
        base_model=base_model,
        model_name=model_name,
        eval_results=_eval_result_objects(results, normalized_score) or None,
    )
    architectures = cfg.get("architectures")
    template = Path(template_path) if template_path is not None else find_template(MODEL_TEMPLATE)

    card = ModelCard.from_template(
        card_data,
        template_path=str(template),
        repo_id=repo_id,
        model_name=model_name,
        summary=summary,
        tasks=tasks,
        model_type=cfg.get("model_type"),
        architecture=", ".join(architectures) if isinstance(architectures, list) else None,
        n_parameters=cfg.get("n_parameters"),
        base_model=base_model,
        base_revision=base_revision,
        datasets=datasets_l,
        hub_url="https://huggingface.co",
        license=license,
        results_table=_results_table(results, normalized_score),
        curve_path=curve_path,
        video_path=video_path,
        command=command.strip() if command else None,
        train_config_yaml=train_yaml.strip() if train_yaml else None,
        config_json=json.dumps(cfg, indent=2, sort_keys=True),
        notes=notes,
        revision=revision,
        library_version=_library_version(),
        usage_task=usage_task,
    )
    validate_card(card)
    return card


# ---------------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------------
def _load_metadata(card: RepoCard | str | os.PathLike) -> tuple[dict, str, str]:
    """Return (metadata dict, kind 'model'|'dataset', full text)."""
    if isinstance(card, RepoCard):
        text = str(card)
        kind = "dataset" if isinstance(card, DatasetCard) else "model"
    elif isinstance(card, os.PathLike) or (isinstance(card, str) and "\n" not in card and Path(card).is_file()):
        text = Path(card).read_text(encoding="utf-8")
        kind = "unknown"
    elif isinstance(card, str):
        text = card
        kind = "unknown"
    else:
        raise ValueError(f"card must be a ModelCard/DatasetCard, the card text or a path, got {type(card).__name__}")
    import yaml

    m = re.match(r"^\s*---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", text, flags=re.S)
    if not m:
        raise ValueError("card has no YAML metadata block (it must start with '---' ... '---')")
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        raise ValueError(f"card metadata is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError("card metadata must be a YAML mapping")
    if kind == "unknown":
        kind = "dataset" if "task_categories" in data and "model-index" not in data else "model"
    return data, kind, text


def validate_card(card: RepoCard | str | os.PathLike, kind: str | None = None) -> dict:
    """Check a card's metadata offline; returns the metadata dict or raises ``ValueError`` naming the problem.

    Model cards: parseable by ``ModelCardData`` (model-index included), ``library_name: mbdpo-hub``,
    ``pipeline_tag: reinforcement-learning``, a ``license``, the base tags, and a ``model-index`` whose results are
    ``reinforcement-learning`` tasks with a dataset name/type and a ``mean_reward`` metric formatted
    ``"<mean> +/- <std>"``. Dataset cards: ``task_categories`` includes ``reinforcement-learning``, a ``license``,
    tags, and ``configs`` with data files. (``card.validate()`` additionally asks the Hub's ``/api/validate-yaml``.)
    """
    data, detected, _ = _load_metadata(card)
    kind = kind or detected
    if kind not in ("model", "dataset"):
        raise ValueError(f"kind must be 'model' or 'dataset', got {kind!r}")
    if not data.get("license"):
        raise ValueError("card metadata: missing 'license'")
    tags = data.get("tags")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError("card metadata: 'tags' must be a list of strings")
    if kind == "dataset":
        try:
            DatasetCardData(**data, ignore_metadata_errors=False)
        except Exception as e:
            raise ValueError(f"card metadata: not valid dataset card data: {e}") from None
        cats = data.get("task_categories") or []
        if "reinforcement-learning" not in cats:
            raise ValueError("card metadata: 'task_categories' must include 'reinforcement-learning'")
        missing = [t for t in ("reinforcement-learning", "mbdpo") if t not in tags]
        if missing:
            raise ValueError(f"card metadata: tags missing {missing}")
        configs = data.get("configs")
        if not isinstance(configs, list) or not configs or not all(
            isinstance(c, dict) and c.get("data_files") for c in configs
        ):
            raise ValueError("card metadata: 'configs' must list at least one config with 'data_files'")
        return data

    try:
        card_data = ModelCardData(**data, ignore_metadata_errors=False)
    except Exception as e:
        raise ValueError(f"card metadata: invalid model-index or card data: {e}") from None
    if data.get("library_name") != LIBRARY_NAME:
        raise ValueError(f"card metadata: library_name must be {LIBRARY_NAME!r}, got {data.get('library_name')!r}")
    if data.get("pipeline_tag") != PIPELINE_TAG:
        raise ValueError(f"card metadata: pipeline_tag must be {PIPELINE_TAG!r}, got {data.get('pipeline_tag')!r}")
    missing = [t for t in BASE_TAGS if t not in tags]
    if missing:
        raise ValueError(f"card metadata: tags missing {missing}")
    model_index = data.get("model-index")
    if model_index is None:
        return data  # a model with no evaluation results yet
    if not isinstance(model_index, list) or not model_index:
        raise ValueError("card metadata: missing 'model-index' (per-task evaluation results)")
    results = model_index[0].get("results") if isinstance(model_index[0], dict) else None
    if not isinstance(results, list) or not results:
        raise ValueError("card metadata: 'model-index' has no results")
    n_mean_reward = 0
    for i, res in enumerate(results):
        ttype = (res.get("task") or {}).get("type")
        if ttype != TASK_TYPE:
            raise ValueError(f"card metadata: model-index result {i}: task.type must be {TASK_TYPE!r}, got {ttype!r}")
        ds = res.get("dataset") or {}
        if not ds.get("name") or not ds.get("type"):
            raise ValueError(f"card metadata: model-index result {i}: dataset name and type are required")
        for met in res.get("metrics") or []:
            if met.get("type") == "mean_reward":
                n_mean_reward += 1
                if not isinstance(met.get("value"), str) or not _MEAN_STD_RE.match(met["value"]):
                    raise ValueError(
                        f"card metadata: model-index result {i} ({ds.get('name')}): mean_reward must be a string "
                        f"'<mean> +/- <std>' (e.g. '812.34 +/- 15.20'), got {met.get('value')!r}"
                    )
    if n_mean_reward == 0:
        raise ValueError("card metadata: model-index has no 'mean_reward' metric")
    if card_data.eval_results is None:
        raise ValueError("card metadata: model-index could not be parsed into eval results")
    return data
