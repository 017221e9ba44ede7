"""Registers infini-bench's `infini_pythia` model with lm-evaluation-harness, lazily.

Installed at the top of site-packages next to `infini_bench_lm_eval.pth`, so Python runs it at
every start-up; all it does there is put a finder first on `sys.meta_path` (no imports). When
`lm_eval.models` is first imported, that module's own models are registered as usual and then
"infini_pythia" is added as a lazy "module:object" entry: neither infini-bench nor torch is
imported until lm-eval asks for the model. lm-eval 0.4.13 has no plugin discovery for models;
the package also declares an `lm_eval.models` entry point for versions that do.
"""

import sys

MODEL_NAME = "infini_pythia"
MODEL_TARGET = "infini_bench.lm_eval_model:InfiniPythiaLM"


def register():
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


class _RegisterAfterLmEvalModels:
    """A meta-path finder that wraps the loader of `lm_eval.models` and registers afterwards."""

    def find_spec(self, name, path=None, target=None):
        if name != "lm_eval.models":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_and_register(module):
                exec_module(module)
                register()

            spec.loader.exec_module = exec_and_register
        return spec


if "lm_eval.models" in sys.modules:
    register()
else:
    sys.meta_path.insert(0, _RegisterAfterLmEvalModels())
