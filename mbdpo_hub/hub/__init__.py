"""Hub integration: model/dataset cards and one-commit publishing.

    from mbdpo_hub.hub import build_model_card, push_pretrained
    card = build_model_card(repo_id="org/mbdpo-walker", config_dict=model.config.to_dict(),
                            eval_results={"walker-walk": {"mean_return": 951.2, "std_return": 12.3, "episodes": 10}})
    push_pretrained(model, "org/mbdpo-walker", card=card, revision="main", tag="v1.0")
"""

from .card_update import update_model_index
from .cards import BASE_TAGS, LIBRARY_NAME, PIPELINE_TAG, build_model_card, format_mean_std, validate_card
from .dataset_card import build_dataset_card
from .publish import ensure_branch, push_dataset_folder, push_policy, push_pretrained

__all__ = [
    "BASE_TAGS",
    "LIBRARY_NAME",
    "PIPELINE_TAG",
    "build_dataset_card",
    "build_model_card",
    "ensure_branch",
    "format_mean_std",
    "push_dataset_folder",
    "push_policy",
    "push_pretrained",
    "update_model_index",
    "validate_card",
]
