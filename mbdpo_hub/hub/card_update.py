"""Updating the evaluation results of an existing model card (`mbdpo-hub evaluate --update-card`)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from ..utils import atomic_write_text
from .cards import (_NORMALIZED_SCORE_DATASET, _RESULTS_END, _RESULTS_START, _eval_result_objects, _normalize_eval_results, _results_table,
                    validate_card)


def _results_from_card(card: ModelCard) -> tuple[dict[str, dict[str, Any]], float | None]:
    results: dict[str, dict[str, Any]] = {}
    overall = None
    for er in card.data.eval_results or []:
        if er.dataset_type == _NORMALIZED_SCORE_DATASET:
            overall = float(er.metric_value)
            continue
        r = results.setdefault(er.dataset_type, {})
        if er.metric_type == "mean_reward":
            m = re.match(r"^\s*(-?[\d.]+)\s*\+/-\s*([\d.]+)\s*$", str(er.metric_value))
            if m:
                r["mean_return"], r["std_return"] = float(m.group(1)), float(m.group(2))
        elif er.metric_type == "normalized_score":
            r["normalized_score"] = float(er.metric_value)
    return {t: r for t, r in results.items() if "mean_return" in r}, overall


def update_model_index(
    card_path: str | os.PathLike,
    eval_results: Mapping[str, Mapping[str, Any]],
    normalized_score: float | None = None,
    *,
    replace: bool = False,
) -> ModelCard:
    """Update the per-task results of the card at ``card_path`` (a README.md) in place, atomically.

    Tasks in ``eval_results`` are added or overwritten; other tasks already in the card are kept unless
    ``replace=True``. The model-index metadata and the results table in the body are both rewritten. Returns
    the updated card.
    """
    path = Path(card_path)
    if not path.is_file():
        raise FileNotFoundError(f"card not found: {path}")
    new = _normalize_eval_results(eval_results)
    card = ModelCard.load(path)
    validate_card(card)
    old, old_norm = _results_from_card(card)
    merged = new if replace else {**old, **new}
    # Keep the richer body info (episodes, extra columns) for tasks we are not updating.
    if normalized_score is None:  # never keep a stale aggregate: recompute it from the per-task scores, if all have one
        norms = [r.get("normalized_score") for r in merged.values()]
        normalized_score = (sum(norms) / len(norms)) if norms and all(n is not None for n in norms) else None
    card.data.eval_results = _eval_result_objects(merged, normalized_score)
    if not card.data.model_name:
        card.data.model_name = path.parent.name or "model"
    table = _results_table(merged, normalized_score)
    text = card.text
    if _RESULTS_START in text and _RESULTS_END in text:
        pre, rest = text.split(_RESULTS_START, 1)
        _, post = rest.split(_RESULTS_END, 1)
        text = f"{pre}{_RESULTS_START}\n{table}\n{_RESULTS_END}{post}"
    else:
        text = text.rstrip("\n") + f"\n\n## Results\n\n{_RESULTS_START}\n{table}\n{_RESULTS_END}\n"
    card.text = text
    updated = ModelCard(str(card))
    validate_card(updated)
    atomic_write_text(path, str(updated))
    return updated


__all__ = ["update_model_index"]
