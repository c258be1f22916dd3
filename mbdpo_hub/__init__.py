"""mbdpo-hub: MBDPO world-model reinforcement learning, the Hugging Face way.

    from mbdpo_hub import MBDPOConfig, MBDPODiffusionPolicy
    policy = MBDPODiffusionPolicy.from_pretrained("path/or/repo")
    action = policy.select_action(obs, task="walker-walk", eval_mode=True)
"""

from transformers import AutoConfig, AutoModel

from .configuration_mbdpo import MODEL_SIZES, MBDPOConfig
from .modeling_mbdpo import MBDPODiffusionPolicy, MBDPOPreTrainedModel, MBDPOWorldModel

__version__ = "0.1.0"

# Auto classes: AutoModel on any mbdpo checkpoint gives the world model (the base model); policies load with
# MBDPODiffusionPolicy.from_pretrained (or AutoModel... via config.architectures when the caller asks for it).
AutoConfig.register("mbdpo", MBDPOConfig, exist_ok=True)
AutoModel.register(MBDPOConfig, MBDPOWorldModel, exist_ok=True)

__all__ = ["MBDPOConfig", "MBDPOWorldModel", "MBDPODiffusionPolicy", "MBDPOPreTrainedModel", "MODEL_SIZES",
           "__version__"]
