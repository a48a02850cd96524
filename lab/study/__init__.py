"""Optuna studies over ablation files: settings x seeds, resumable, with parallel workers.

spec (the ablation file) -> attrs (every stored name) -> storage -> queue -> objective ->
worker -> run (`lab sweep`). Readers of a study (the report, exports) use attrs only.
"""
