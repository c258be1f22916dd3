"""Model/dataset cards (mbdpo_hub.hub.cards) and one-commit publishing (mbdpo_hub.hub.publish) on the local hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from huggingface_hub import HfApi, ModelCard, ModelCardData, hf_hub_download
from transformers import PreTrainedConfig, PreTrainedModel

from mbdpo_hub.hub import (
    BASE_TAGS,
    build_dataset_card,
    build_model_card,
    format_mean_std,
    push_dataset_folder,
    push_pretrained,
    update_model_index,
    validate_card,
)

TASKS = ["walker-walk", "cartpole-balance"]
EVAL = {
    "walker-walk": {"mean_return": 951.2345, "std_return": 12.3, "episodes": 10, "normalized_score": 0.951},
    "cartpole-balance": {"mean_return": 998, "std_return": 0.456, "episodes": 10},
}


class CardTestConfig(PreTrainedConfig):
    model_type = "mbdpo_card_test"

    def __init__(self, hidden: int = 4, tasks: list[str] | None = None, **kwargs):
        self.hidden = hidden
        self.tasks = tasks or []
        super().__init__(**kwargs)


class CardTestModel(PreTrainedModel):
    config_class = CardTestConfig

    def __init__(self, config):
        super().__init__(config)
        self.lin = nn.Linear(config.hidden, 2)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight)
            nn.init.zeros_(module.bias)


def _model(seed: int = 0) -> CardTestModel:
    torch.manual_seed(seed)
    return CardTestModel(CardTestConfig(hidden=3, tasks=TASKS))


def _card(repo_id: str = "org/mbdpo-test", **kw) -> ModelCard:
    args = dict(
        repo_id=repo_id,
        config_dict=_model().config.to_dict(),
        eval_results=EVAL,
        normalized_score=0.9,
        datasets=["org/mbdpo-data"],
        command="python -m mbdpo_hub.train --config recipes/walker.yaml",
        train_config_yaml="steps: 1000\nbatch_size: 256\n",
        curve_path="eval/curve.png",
        video_path="eval/rollout.mp4",
    )
    args.update(kw)
    return build_model_card(**args)


def _metadata(text: str) -> dict:
    return yaml.safe_load(text.split("---")[1])


# --------------------------------------------------------------------------------------------- model cards
def test_model_card_metadata_validates():
    card = _card(base_model="org/mbdpo-base", base_revision="a" * 40)
    meta = validate_card(card)
    assert meta["library_name"] == "mbdpo-hub"
    assert meta["pipeline_tag"] == "reinforcement-learning"
    assert meta["license"] == "mit"
    assert meta["base_model"] == "org/mbdpo-base" and meta["datasets"] == ["org/mbdpo-data"]
    assert set(BASE_TAGS) <= set(meta["tags"]) and set(TASKS) <= set(meta["tags"])
    # huggingface_hub's own parser reads it back
    data = ModelCard(str(card)).data
    assert isinstance(data, ModelCardData) and data.library_name == "mbdpo-hub"
    text = card.text
    assert "from mbdpo_hub import MBDPODiffusionPolicy" in text
    assert 'MBDPODiffusionPolicy.from_pretrained("org/mbdpo-test")' in text
    assert "![Learning curve](eval/curve.png)" in text and 'src="eval/rollout.mp4"' in text
    assert "python -m mbdpo_hub.train --config recipes/walker.yaml" in text and "batch_size: 256" in text
    assert "2605.26282" in text and "TD-MPC2" in text and "a" * 40 in text
    assert '"hidden": 3' in text  # the exact config


def test_a_run_folder_of_any_name_gets_a_valid_card():
    """A run folder called `eta+rehearsal-seed1` once failed at the very end of training: `local/<folder>` was not
    a valid repo id. `local_repo_id` makes one."""
    from mbdpo_hub.utils import local_repo_id

    assert local_repo_id("eta+rehearsal-seed1") == "local/eta-rehearsal-seed1"
    assert local_repo_id("+++") == "local/model" and local_repo_id("ok_name.v2") == "local/ok_name.v2"
    validate_card(_card(repo_id=local_repo_id("eta+pi+rehearsal seed 1")))
    assert local_repo_id("réglage-ü") == "local/r-glage"  # non-ASCII letters are not valid in a repo id
    assert local_repo_id("a++b..c") == "local/a-b-c"
    from huggingface_hub.utils import validate_repo_id

    for name in ("a++b..c", "x" * 200 + "+y", "-.é.-"):
        validate_repo_id(local_repo_id(name))
    validate_card(_card(repo_id=local_repo_id("réglage-ü")))


def test_model_index_values_are_mean_plus_minus_std():
    assert format_mean_std(1, 0.5) == "1.00 +/- 0.50"
    assert format_mean_std(-3.14159, 2) == "-3.14 +/- 2.00"
    card = _card()
    meta = _metadata(str(card))
    results = meta["model-index"][0]["results"]
    by_task = {r["dataset"]["name"]: r for r in results}
    walker = by_task["walker-walk"]
    assert walker["task"]["type"] == "reinforcement-learning"
    assert walker["dataset"]["type"] == "walker-walk"
    metrics = {m["type"]: m["value"] for m in walker["metrics"]}
    assert metrics["mean_reward"] == "951.23 +/- 12.30"
    assert metrics["normalized_score"] == pytest.approx(0.951)
    cart = {m["type"]: m["value"] for m in by_task["cartpole-balance"]["metrics"]}
    assert cart == {"mean_reward": "998.00 +/- 0.46"}
    overall = [r for r in results if r["dataset"]["type"] == "mbdpo-normalized-score"]
    assert overall and overall[0]["metrics"][0]["value"] == pytest.approx(0.9)
    assert "| `walker-walk` | 951.23 | 12.30 | 10 | 0.951 |" in card.text


def test_broken_cards_fail_validation(tmp_path):
    good = str(_card())
    broken = {
        "library_name": good.replace("library_name: mbdpo-hub", "library_name: transformers"),
        "pipeline_tag": good.replace("pipeline_tag: reinforcement-learning", "pipeline_tag: robotics"),
        "mean_reward": good.replace("value: 951.23 +/- 12.30", "value: 951.23"),
        "license": good.replace("license: mit\n", ""),
        "YAML": good.replace("library_name: mbdpo-hub", "library_name: [unclosed"),
        "metadata block": good.split("---", 2)[2],
    }
    for needle, text in broken.items():
        with pytest.raises(ValueError, match=needle):
            validate_card(text, kind="model")
    no_index = ModelCard(good)
    no_index.data.eval_results = None
    assert "model-index" not in validate_card(no_index)  # a model with no evaluation yet is a valid card
    bad_index = good.replace("type: mean_reward", "type: other")
    with pytest.raises(ValueError, match="model-index has no 'mean_reward'"):
        validate_card(bad_index, kind="model")
    # a path works too
    p = tmp_path / "README.md"
    p.write_text(good)
    assert validate_card(p)["library_name"] == "mbdpo-hub"


def test_build_model_card_rejects_bad_input():
    cfg = {"model_type": "mbdpo"}
    with pytest.raises(ValueError, match="std_return"):
        build_model_card(repo_id="org/x", config_dict=cfg, eval_results={"walker-walk": {"mean_return": 1.0}})
    with pytest.raises(ValueError, match="finite"):
        build_model_card(repo_id="org/x", config_dict=cfg,
                         eval_results={"walker-walk": {"mean_return": float("nan"), "std_return": 1.0}})
    assert "No evaluation results yet." in str(build_model_card(repo_id="org/x", config_dict=cfg, eval_results={}))
    with pytest.raises(ValueError, match="must be a dict"):
        build_model_card(repo_id="org/x", config_dict=cfg, eval_results=[1])
    with pytest.raises(ValueError, match="repo_id"):
        build_model_card(repo_id="no-namespace", config_dict=cfg, eval_results=EVAL)
    with pytest.raises(ValueError, match="curve_path"):
        build_model_card(repo_id="org/x", config_dict=cfg, eval_results=EVAL, curve_path="/abs/curve.png")
    with pytest.raises(ValueError, match="episodes"):
        build_model_card(repo_id="org/x", config_dict=cfg,
                         eval_results={"t": {"mean_return": 1, "std_return": 0, "episodes": 0}})


def test_update_model_index(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(str(_card()))
    updated = update_model_index(
        path, {"walker-walk": {"mean_return": 960.0, "std_return": 5.0, "episodes": 20},
               "cheetah-run": {"mean_return": 700.5, "std_return": 30.25}}
    )
    text = path.read_text()
    assert text == str(updated)
    meta = validate_card(path)
    values = {r["dataset"]["name"]: r["metrics"][0]["value"] for r in meta["model-index"][0]["results"]}
    assert values["walker-walk"] == "960.00 +/- 5.00"
    assert values["cheetah-run"] == "700.50 +/- 30.25"
    assert values["cartpole-balance"] == "998.00 +/- 0.46"  # untouched task kept
    assert "| `cheetah-run` | 700.50 | 30.25 |" in text and "951.23" not in text
    assert text.count("<!-- mbdpo-results-start -->") == 1
    update_model_index(path, {"walker-walk": {"mean_return": 1, "std_return": 0}}, replace=True)
    names = [r["dataset"]["name"] for r in validate_card(path)["model-index"][0]["results"]]
    assert names == ["walker-walk"]
    with pytest.raises(ValueError):
        update_model_index(path, {"walker-walk": {"mean_return": "high", "std_return": 0}})
    assert validate_card(path)  # a failed update leaves the file valid


# --------------------------------------------------------------------------------------------- dataset cards
def test_dataset_card():
    card = build_dataset_card(
        repo_id="org/mbdpo-data",
        tasks=[{"name": "walker-walk", "obs_dim": 24, "action_dim": 6, "episode_length": 500, "num_episodes": 7},
               {"name": "cartpole-balance", "obs_dim": 5, "action_dim": 1, "episode_length": 500, "num_episodes": 3}],
        num_frames=5010,
        collection="Rollouts of the released TD-MPC2 checkpoints, 3 seeds, exploration noise 0.1.",
        source="nicklashansen/tdmpc2",
    )
    meta = validate_card(card)
    assert meta["task_categories"] == ["reinforcement-learning"]
    assert meta["configs"][0]["data_files"][0]["path"] == "data/*.parquet"
    assert "walker-walk" in meta["tags"] and meta["size_categories"] == ["1K<n<10K"]
    assert "| 0 | `walker-walk` | 24 | 6 | 500 | 7 |" in card.text
    assert "**Episodes:** 10" in card.text and "**Padded observation / action dims:** 24 / 6" in card.text
    assert "exploration noise 0.1" in card.text
    with pytest.raises(ValueError, match="task_categories"):
        validate_card(str(card).replace("- reinforcement-learning\npretty_name", "- robotics\npretty_name"),
                      kind="dataset")
    with pytest.raises(ValueError, match="obs_dim"):
        build_dataset_card(repo_id="org/d", tasks=[{"name": "t", "obs_dim": 0, "action_dim": 1}])


# --------------------------------------------------------------------------------------------- publishing
def test_push_pretrained_branch_tag_one_commit(local_hub, tmp_path):
    api = HfApi()
    model = _model(seed=3)
    extras = tmp_path / "extras"
    extras.mkdir()
    (extras / "curve.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (extras / "rollout.mp4").write_bytes(bytes(300))
    (extras / "train_config.yaml").write_text("steps: 1000\n")
    (extras / "eval_results.json").write_text(json.dumps(EVAL))
    card = _card("org/pushed", revision="v0.1")

    card.validate()  # huggingface_hub's own check, through the hub's /api/validate-yaml
    api.create_repo("org/pushed")
    main_head = api.model_info("org/pushed").sha
    info = push_pretrained(
        model, "org/pushed", card=card, revision="exp", tag="v0.1", commit_message="exp checkpoint",
        extra_files={
            "eval/curve.png": extras / "curve.png",
            "eval/rollout.mp4": extras / "rollout.mp4",
            "train_config.yaml": extras / "train_config.yaml",
            "eval_results.json": extras / "eval_results.json",
        },
    )
    # one commit on the new branch, main untouched, tag on that exact commit
    commits = api.list_repo_commits("org/pushed", revision="exp")
    assert commits[0].commit_id == info.oid and commits[0].title == "exp checkpoint"
    assert commits[1].commit_id == main_head
    assert api.model_info("org/pushed").sha == main_head
    refs = api.list_repo_refs("org/pushed")
    assert {t.name: t.target_commit for t in refs.tags} == {"v0.1": info.oid}
    files = set(api.list_repo_files("org/pushed", revision="exp"))
    assert {"README.md", "config.json", "model.safetensors", "eval/curve.png", "eval/rollout.mp4",
            "train_config.yaml", "eval_results.json"} <= files
    mi = api.model_info("org/pushed", revision="v0.1")
    assert mi.card_data.library_name == "mbdpo-hub" and mi.library_name == "mbdpo-hub"
    assert mi.pipeline_tag == "reinforcement-learning"

    # pulled back by revision into a fresh cache
    local_hub.new_cache()
    for rev in ("v0.1", "exp", info.oid):
        loaded = CardTestModel.from_pretrained("org/pushed", revision=rev)
        assert torch.equal(loaded.lin.weight, model.lin.weight)
    readme = Path(hf_hub_download("org/pushed", "README.md", revision="v0.1")).read_text()
    assert readme == str(card) and "library_name: transformers" not in readme
    assert validate_card(readme)["library_name"] == "mbdpo-hub"

    # a second push to the same branch adds one commit; re-using the tag for another commit is refused
    model2 = _model(seed=4)
    info2 = push_pretrained(model2, "org/pushed", card=card, revision="exp")
    assert api.list_repo_commits("org/pushed", revision="exp")[0].commit_id == info2.oid != info.oid
    with pytest.raises(ValueError, match="tag"):
        push_pretrained(_model(seed=5), "org/pushed", card=card, revision="exp", tag="v0.1")
    with pytest.raises(ValueError, match="tag"):
        push_pretrained(model2, "org/pushed", card=card, revision="v0.1")  # a tag is not a branch


def test_push_pretrained_rejects_bad_input(local_hub, tmp_path):
    model = _model()
    card = _card("org/bad")
    with pytest.raises(ValueError, match="library_name"):
        push_pretrained(model, "org/bad", card=str(card).replace("mbdpo-hub", "transformers"))
    with pytest.raises(FileNotFoundError):
        push_pretrained(model, "org/bad", card=card, extra_files={"x.png": tmp_path / "missing.png"})
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ValueError, match="overwrite"):
        push_pretrained(model, "org/bad", card=card, extra_files={"config.json": tmp_path / "c.json"})
    with pytest.raises(ValueError, match="invalid path"):
        push_pretrained(model, "org/bad", card=card, extra_files={"../x.json": tmp_path / "c.json"})
    with pytest.raises(TypeError):
        push_pretrained(object(), "org/bad", card=card)


def test_push_dataset_folder(local_hub, tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "ds"
    (folder / "data").mkdir(parents=True)
    (folder / "meta").mkdir()
    for i in range(3):
        pq.write_table(pa.table({"episode_index": [i, i], "reward": [0.5 * i, 1.0]}),
                       folder / "data" / f"shard-{i:05d}.parquet")
    (folder / "meta" / "tasks.json").write_text(json.dumps({"tasks": [{"name": "walker-walk"}]}))
    card = build_dataset_card(repo_id="org/eps", tasks=[{"name": "walker-walk", "obs_dim": 24, "action_dim": 6}],
                              num_frames=6)
    info = push_dataset_folder(folder, "org/eps", card=card, tag="v1")
    api = HfApi()
    files = set(api.list_repo_files("org/eps", repo_type="dataset"))
    assert {"README.md", "meta/tasks.json", "data/shard-00002.parquet"} <= files
    assert not (folder / "README.md").exists()  # the local folder is never modified
    local_hub.new_cache()
    ds = datasets.load_dataset("org/eps", split="train", revision="v1")
    assert ds.num_rows == 6

    # re-push with fewer shards: the stale shard is deleted in the same commit
    (folder / "data" / "shard-00002.parquet").unlink()
    info2 = push_dataset_folder(folder, "org/eps", card=card)
    files2 = set(api.list_repo_files("org/eps", repo_type="dataset"))
    assert "data/shard-00002.parquet" not in files2 and "data/shard-00001.parquet" in files2
    assert api.list_repo_commits("org/eps", repo_type="dataset")[1].commit_id == info.oid != info2.oid
    with pytest.raises(ValueError, match="parquet"):
        push_dataset_folder(folder / "meta", "org/eps", card=card)


def test_policy_push_to_hub_writes_our_card(local_hub, tiny):
    from mbdpo_hub import MBDPODiffusionPolicy

    policy = MBDPODiffusionPolicy(tiny())
    policy.push_to_hub("org/tiny-policy", eval_results={"walker-walk": dict(mean_return=12.5, std_return=1.5,
                                                                            episodes=3)}, tag="v1")
    readme = Path(hf_hub_download("org/tiny-policy", "README.md", revision="v1")).read_text()
    assert "library_name: mbdpo-hub" in readme and "12.50 +/- 1.50" in readme
    local_hub.new_cache()
    back = MBDPODiffusionPolicy.from_pretrained("org/tiny-policy", revision="v1")
    for k, v in policy.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_card_templates_ship_inside_the_package():
    """A wheel install has no `model_cards/` beside the package: the templates travel as package data through the
    `mbdpo_hub/model_cards` link, and `find_template` finds them there."""
    import tomllib

    import mbdpo_hub
    from mbdpo_hub.hub.cards import DATASET_TEMPLATE, MODEL_TEMPLATE, find_template

    pkg_dir = Path(mbdpo_hub.__file__).parent / "model_cards"
    pyproject = tomllib.loads((Path(mbdpo_hub.__file__).parents[1] / "pyproject.toml").read_text())
    assert "model_cards/*_template.md" in pyproject["tool"]["setuptools"]["package-data"]["mbdpo_hub"]
    for name in (MODEL_TEMPLATE, DATASET_TEMPLATE):
        assert (pkg_dir / name).is_file()
        assert find_template(name).read_text() == (pkg_dir / name).read_text()


def test_policy_push_to_hub_takes_transformers_arguments_and_no_results(local_hub, tiny):
    from mbdpo_hub import MBDPODiffusionPolicy

    policy = MBDPODiffusionPolicy(tiny())  # untrained: no evaluation results yet
    policy.push_to_hub("org/fresh", tags=["my-tag"], max_shard_size="50MB", commit_description="first")
    readme = Path(hf_hub_download("org/fresh", "README.md")).read_text()
    assert "library_name: mbdpo-hub" in readme and "my-tag" in readme and "No evaluation results yet." in readme
    assert "model-index:" not in readme.split("---")[1]  # no results in the metadata
    with pytest.raises(ValueError, match="safe_serialization=False is refused"):
        policy.push_to_hub("org/fresh", safe_serialization=False)
    with pytest.raises(Exception, match="Pull requests"):  # reaches the Hub call (the local hub has no PRs)
        policy.push_to_hub("org/fresh", create_pr=True)
