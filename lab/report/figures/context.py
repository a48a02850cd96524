"""Cost against context length: KV bytes per sequence and decode latency per token
(lab.eval.context, stored by lab.study.costpass in CONTEXT_ATTR)."""

from __future__ import annotations

from pathlib import Path

from lab.report.figures.common import MARKERS, Figure, plt


def _style(i: int, info: dict) -> dict:
    """One colour and marker per setting; serial solid, parallel dashed."""
    return {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)], "ms": 4, "lw": 1.3,
            "ls": "--" if info.get("loop_mode") == "parallel" else "-"}


def _log2_axes(ax, lengths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lengths, [str(c) for c in lengths])
    ax.set_xlabel("context length (cached tokens)")


def fig_context_kv(data: dict | None, path: Path) -> Figure | None:
    """KV bytes per sequence against context length (log-log), one line per setting."""
    if not data or not data.get("settings"):
        return None
    lengths = data["lengths"]
    bi = data["batches"].index(1) if 1 in data["batches"] else 0
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.4, 4.2))
    for i, (label, s) in enumerate(data["settings"].items()):
        ax.plot(lengths, s["kv_bytes"][bi], label=label, **_style(i, s))
    _log2_axes(ax, lengths)
    ax.set_ylabel("KV-cache bytes per sequence")
    ax.set_title(f"KV cache per sequence (batch {data['batches'][bi]}); dashed: parallel mode",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    pyplot.close(fig)
    return Figure(path.name, "KV-cache bytes per sequence against the number of cached tokens, "
                  "read off each setting's decode cache (log-log). Lines of one slope are "
                  "linear in the context; on a log scale a constant ratio between two settings "
                  "is a constant vertical gap. Settings holding the same bytes draw one line.")


def fig_context_latency(data: dict | None, path: Path) -> Figure | None:
    """Decode seconds per token against context length, one panel per batch size."""
    if not data or not data.get("settings"):
        return None
    lengths, batches = data["lengths"], data["batches"]
    pyplot = plt()
    fig, axes = pyplot.subplots(1, len(batches), figsize=(5.0 * len(batches), 4.0),
                                squeeze=False)
    for bi, (ax, B) in enumerate(zip(axes[0], batches, strict=True)):
        for i, (label, s) in enumerate(data["settings"].items()):
            ax.plot(lengths, s["latency_s"][bi], label=label, **_style(i, s))
        _log2_axes(ax, lengths)
        ax.set_ylabel("decode seconds per token step")
        ax.set_title(f"batch {B}", fontsize=10)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    pyplot.close(fig)
    return Figure(path.name, "Decode latency of one single-token step (for the whole batch) "
                  "against the cached context, one panel per batch size (log-log): "
                  f"the fastest of {data.get('steps')} steps, median over {data.get('rounds')} "
                  "rounds in which the settings were interleaved.")
