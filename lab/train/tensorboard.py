"""What a run shows in TensorBoard: one event file, a small HParams column set, figures, config.

* :class:`RunLogger` is Lightning's TensorBoardLogger whose ``finalize`` (called by Lightning at
  the end of every ``fit`` and ``validate``) only flushes: ``train()`` logs its final
  validation, extrapolation curves, hparams and ``hp/*`` metrics into the same writer, then
  closes it once with :meth:`RunLogger.close_run`. Every run therefore has one event file.
* :func:`hparams_summaries` writes the HParams plugin's three records itself: the hparams are
  only what identifies a run (the swept keys, setting, seed, task), each with the domain the
  caller declares (a study passes the whole study's domain, so every trial of a study
  describes the same experiment), and a key whose domain has more than one value is marked
  as differing (TensorBoard lists those columns first).
* :class:`FigureLogger` draws, at every validation, the per-loop diagnostics against the loop
  index and, where the task reports ``<split>/acc_by_difficulty/<k>``, accuracy by
  difficulty, as images (``add_figure``).
* :class:`StepProgressBar` shows training steps out of ``train.steps`` (Lightning 2.6's bar
  shows ``Epoch 0/-2`` for step-based training, and the logger's version as ``v_num``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import yaml
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from lab.config import LabConfig, flatten, to_dict

# The hparams a standalone `lab train` run logs (a study logs its swept keys instead).
DEFAULT_HPARAM_KEYS = ("model.family", "model.n_layers", "model.loops", "model.d_model")
COST_METRICS = ("params", "effective_depth", "flops_per_token", "train_flops_per_token",
                "train_tokens_per_s", "latency_s_per_token", "kv_bytes_per_token",
                "train_step_peak_bytes")
# Panels of the diagnostics figure: (title, ((diagnostic, series label), ...)). A looped
# model's update is split into the block's own part and the injected input (lab.eval.metrics).
DIAG_PANELS = (
    ("readout accuracy", (("readout_acc", "readout"),)),
    ("relative update norm", (("block_norm", "block's own update"),
                              ("inject_norm", "injected input"), ("update_norm", "total update"))),
    ("cosine of successive updates", (("block_cos", "block's own updates"),
                                      ("update_cos", "total updates"))),
    ("KL to previous readout", (("readout_kl", "readout"),)),
)


# --------------------------------------------------------------------------------------------
# Hparams


def hparam_value(v: Any) -> bool | int | float | str:
    """A config value as an hparam: bools and numbers as they are, anything else as text."""
    if isinstance(v, bool | int | float):
        return v
    if v is None:
        return "null"
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)


def run_hparams(cfg: LabConfig, keys: list[str] | tuple[str, ...] = (), setting: str | None = None
                ) -> dict[str, Any]:
    """The hparams that identify a run: `keys` of the resolved config (DEFAULT_HPARAM_KEYS
    when none are given), the setting's label when it has one, the seed and the task."""
    flat = flatten(to_dict(cfg))
    out = {k: hparam_value(flat.get(k)) for k in (keys or DEFAULT_HPARAM_KEYS)}
    if setting is not None:
        out["setting"] = setting
    out["seed"] = int(cfg.seed)
    out["task"] = str(cfg.task["name"])
    return out


def final_metrics(metrics: dict[str, float], costs: dict[str, Any], diverged: bool
                  ) -> dict[str, float]:
    """Every final metric (per-loop diagnostics excluded: they are figures) and every numeric
    cost, as the ``hp/*`` scalars the HParams tab shows."""
    out = {f"hp/{k.replace('/', '_')}": float(v) for k, v in metrics.items()
           if not k.startswith("diag/") and isinstance(v, int | float)}
    for k in COST_METRICS:
        v = costs.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[f"hp/{k}"] = float(v)
    out["hp/diverged"] = float(diverged)
    return out


def _kind(v: Any) -> str:
    return "BOOL" if isinstance(v, bool) else "FLOAT64" if isinstance(v, int | float) else "STRING"


def _pb_value(v: bool | float | str):
    from google.protobuf import struct_pb2

    kind = _kind(v)
    if kind == "BOOL":
        return struct_pb2.Value(bool_value=v)
    if kind == "FLOAT64":
        return struct_pb2.Value(number_value=float(v))
    return struct_pb2.Value(string_value=str(v))


def _plugin_summary(tag: str, **data):
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **data)
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def hparams_summaries(hparams: dict[str, Any], metric_names: list[str],
                      domain: dict[str, list] | None = None, status: str = "ok") -> list:
    """The HParams plugin's experiment, session-start and session-end summaries.

    `domain` maps a key to every value it takes in the study; a run's own value is added when
    missing. Keys without a domain get their own value as the domain.
    """
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import SessionEndInfo, SessionStartInfo

    domain = domain or {}
    infos, start = [], SessionStartInfo()
    for k, v in hparams.items():
        values = [hparam_value(d) for d in domain.get(k, [])]
        values = [d for d in values if _kind(d) == _kind(v)]
        if v not in values:
            values.append(v)
        infos.append(api_pb2.HParamInfo(
            name=k, type=api_pb2.DataType.Value(f"DATA_TYPE_{_kind(v)}"), differs=len(values) > 1,
            domain_discrete=struct_pb2.ListValue(values=[_pb_value(d) for d in values])))
        start.hparams[k].CopyFrom(_pb_value(v))
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m)) for m in metric_names])
    end = SessionEndInfo(status=api_pb2.Status.Value(
        "STATUS_SUCCESS" if status == "ok" else "STATUS_FAILURE"))
    return [_plugin_summary(metadata.EXPERIMENT_TAG, experiment=experiment),
            _plugin_summary(metadata.SESSION_START_INFO_TAG, session_start_info=start),
            _plugin_summary(metadata.SESSION_END_INFO_TAG, session_end_info=end)]


# --------------------------------------------------------------------------------------------
# The logger


class RunLogger(TensorBoardLogger):
    """A TensorBoardLogger that stays open across ``fit`` and ``validate`` until
    :meth:`close_run`, so that everything a run logs lands in one event file."""

    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self.experiment.flush()

    def log_config(self, cfg: LabConfig) -> None:
        """The whole resolved config as text (also in the run's config.yaml)."""
        text = yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip()
        self.experiment.add_text("config", "\n".join("    " + line for line in text.splitlines()))

    def log_results(self, hparams: dict, metrics: dict[str, float], step: int,
                    domain: dict[str, list] | None = None, status: str = "ok") -> None:
        """The ``hp/*`` scalars, then the hparams records, at the run's last step."""
        writer = self.experiment
        for k, v in metrics.items():
            if math.isfinite(v):
                writer.add_scalar(k, v, global_step=step)
        for summary in hparams_summaries(hparams, list(metrics), domain, status):
            writer.file_writer.add_summary(summary, global_step=step)
        self.hparams.update(hparams)

    def close_run(self, status: str) -> None:
        """Write hparams.yaml, then flush and close the event file (once)."""
        from lightning.pytorch.core.saving import save_hparams_to_yaml

        if os.path.isdir(self.log_dir):
            save_hparams_to_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)
        super().finalize(status)


# --------------------------------------------------------------------------------------------
# Figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _indexed(metrics: dict[str, float], prefix: str) -> list[tuple[Any, float]]:
    """(index, value) for every metric named `prefix/<index>`, in index order."""
    rows = []
    for k, v in metrics.items():
        if k.startswith(prefix + "/") and "/" not in k[len(prefix) + 1:]:
            idx = k[len(prefix) + 1:]
            try:
                idx = float(idx)
                idx = int(idx) if idx.is_integer() else idx
            except ValueError:
                pass
            rows.append((idx, float(v)))
    return sorted(rows, key=lambda r: (isinstance(r[0], str), r[0]))


def diagnostics_figure(metrics: dict[str, float]):
    """Per-loop (or per-layer) diagnostics against the loop index, one panel each; None
    when the metrics have no ``diag/<name>/<i>``."""
    panels = []
    for title, series in DIAG_PANELS:
        rows = [(label, r) for name, label in series if (r := _indexed(metrics, f"diag/{name}"))]
        if rows:
            panels.append((title, rows))
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels, strict=True):
        for label, rows in series:
            ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", ms=3, label=label)
        if len(series) > 1:
            ax.legend(fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("loop / layer index")
        ax.grid(alpha=0.3)
    # Fixed margins: tight_layout measured every label again, a third of the figure's time.
    fig.subplots_adjust(left=0.65 / fig.get_figwidth(), right=0.98, bottom=0.17, top=0.9,
                        wspace=0.3)
    return fig


def difficulty_figure(metrics: dict[str, float]):
    """Accuracy against difficulty, one line per split, from ``<split>/acc_by_difficulty/<k>``;
    None when the task reports no such metric."""
    splits = sorted({k.split("/", 1)[0] for k in metrics if "/acc_by_difficulty/" in k})
    if not splits:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    for split in splits:
        rows = _indexed(metrics, f"{split}/acc_by_difficulty")
        ax.plot([str(r[0]) for r in rows] if any(isinstance(r[0], str) for r in rows)
                else [r[0] for r in rows], [r[1] for r in rows], marker="o", label=split)
    ax.set_xlabel("difficulty")
    ax.set_ylabel("token accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.17, right=0.97, bottom=0.16, top=0.96)
    return fig


def metric_figures(metrics: dict[str, float]) -> dict[str, Any]:
    """Every figure the metrics allow, by TensorBoard tag."""
    figs = {"figures/diagnostics": diagnostics_figure(metrics),
            "figures/acc_by_difficulty": difficulty_figure(metrics)}
    return {k: v for k, v in figs.items() if v is not None}


class FigureLogger(Callback):
    """At the end of every validation, the figures of :func:`metric_figures` as images."""

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not isinstance(trainer.logger, TensorBoardLogger):
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        for tag, fig in metric_figures(metrics).items():
            trainer.logger.experiment.add_figure(tag, fig, global_step=trainer.global_step,
                                                 close=True)


# --------------------------------------------------------------------------------------------
# Progress


class StepProgressBar(RichProgressBar):
    """Rich progress bar counting training steps out of ``max_steps`` (not epochs)."""

    @property
    def total_train_batches(self) -> int | float:
        steps = self.trainer.max_steps
        return steps if steps and steps > 0 else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        return "train step"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._update(self.train_progress_bar_id, trainer.global_step)
        self.refresh()

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        loss = getattr(pl_module, "last_loss", None)  # a number already on the host
        if loss is not None:
            items["train/loss"] = f"{loss:.4g}"
        return items
