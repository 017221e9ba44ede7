"""infini-bench: benchmarks for language models with compressive (Infini-attention) memory.

Public names are imported lazily so that `import infini_bench` stays cheap (no torch).
"""

__version__ = "0.1.0"

_MODELS = {"PRESETS", "InfiniPythiaConfig", "InfiniPythiaForCausalLM", "InfiniPythiaModel", "MemoryState",
           "build_model"}

__all__ = sorted(_MODELS)


def __getattr__(name):
    if name in _MODELS:
        from . import models  # deferred: `import infini_bench` stays cheap (no torch)

        return getattr(models, name)
    raise AttributeError(f"module 'infini_bench' has no attribute {name!r}")
