"""Infini-Pythia models, registered with transformers' Auto classes on import."""

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_infini_pythia import PRESETS, InfiniPythiaConfig
from .memory import MemoryState
from .modeling_infini_pythia import InfiniPythiaForCausalLM, InfiniPythiaModel, build_model

AutoConfig.register(InfiniPythiaConfig.model_type, InfiniPythiaConfig, exist_ok=True)
AutoModelForCausalLM.register(InfiniPythiaConfig, InfiniPythiaForCausalLM, exist_ok=True)

__all__ = ["PRESETS", "InfiniPythiaConfig", "InfiniPythiaForCausalLM", "InfiniPythiaModel", "MemoryState",
           "build_model"]
