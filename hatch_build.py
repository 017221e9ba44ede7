"""Hatchling hook: install the lm-eval start-up hook in editable installs too (hatchling's
`force-include` covers regular wheels only)."""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

STARTUP_FILES = {
    "infini_bench/_startup/_infini_bench_lm_eval.py": "_infini_bench_lm_eval.py",
    "infini_bench/_startup/infini_bench_lm_eval.pth": "infini_bench_lm_eval.pth",
}


class StartupHook(BuildHookInterface):
    def initialize(self, version, build_data):
        key = "force_include_editable" if version == "editable" else "force_include"
        build_data[key].update(STARTUP_FILES)
