"""Infini-Pythia models, registered with transformers' Auto classes on import."""

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_infini_pythia import PRESETS, InfiniPythiaConfig
from .memory import MemoryState
from .modeling_infini_pythia import InfiniPythiaForCausalLM, InfiniPythiaModel, build_model

AutoConfig.register(InfiniPythiaConfig.model_type, InfiniPythiaConfig, exist_ok=True)
AutoModelForCausalLM.register(InfiniPythiaConfig, InfiniPythiaForCausalLM, exist_ok=True)
# save_pretrained then copies the model code into the checkpoint and names it in config.json
# (auto_map): AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True) loads it where
# infini-bench is not installed. The modeling files import only transformers and each other.
InfiniPythiaConfig.register_for_auto_class()
InfiniPythiaForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["PRESETS", "InfiniPythiaConfig", "InfiniPythiaForCausalLM", "InfiniPythiaModel", "MemoryState",
           "build_model"]
