"""Testing helpers: a local Hugging Face Hub server, env patching, and a pytest plugin.

``mbdpo_hub_testing.pytest_plugin`` (fixtures ``local_hub`` / ``local_hub_server``, marker ``realhub``) is not
imported here so that this package does not require pytest.
"""

from .hf_env import DUMMY_TOKEN, hf_env
from .hub_server import HubError, HubStore, LocalHub, start_local_hub

__all__ = ["DUMMY_TOKEN", "HubError", "HubStore", "LocalHub", "hf_env", "start_local_hub"]
