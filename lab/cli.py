"""The ``lab`` command: train, check, sweep, report, findings, export, rerun, compare, sample,
dashboard, bench."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lab.errors import LabError

console = Console(stderr=True, soft_wrap=True)
out = Console(width=None if sys.stdout.isatty() else 160)


def run_table(rows: list[dict], title: str) -> Table:
    from lab.report.fmt import fmt_int, pct

    table = Table(title=title, header_style="bold")
    for col, justify in (("config", "left"), ("family", "left"), ("plan", "left"),
                         ("params", "right"), ("depth", "right"), ("FLOPs/tok", "right"),
                         ("val acc", "right"), ("OOD acc", "right"), ("wall", "right"),
                         ("run dir", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    bpb = any(r.get("val_bpb") is not None for r in rows)
    if bpb:  # byte-level tasks: bits per byte is the measure
        table.add_column("val bpb", justify="right")
        table.add_column("OOD bpb", justify="right")
    for r in rows:
        extra = [f"{r['val_bpb']:.4f}" if r.get("val_bpb") is not None else "-",
                 f"{r['ood_bpb']:.4f}" if r.get("ood_bpb") is not None else "-"] if bpb else []
        table.add_row(
            escape(r.get("config", "")), escape(r["family"]), escape(r["plan"]), fmt_int(r["params"]),
            str(r["depth"]), fmt_int(r["flops"]), pct(r.get("val")), pct(r.get("ood")),
            "-" if r.get("wall") is None else f"{r['wall']:.0f}s", escape(r.get("run_dir", "-")),
            *extra,
        )
    return table


def cmd_train(args) -> int:
    from lab.config import load_config
    from lab.model import resolve
    from lab.study.spec import NON_IDENTITY_KEYS
    from lab.tasks import describe
    from lab.train import joined_process, train
    from lab.train.tensorboard import DEFAULT_HPARAM_KEYS, run_hparams

    cfg = load_config(args.config, args.overrides)
    # What it trains on (a corpus's files and MB per split) before the first step.
    out.print(f"task: {escape(describe(resolve(cfg)[1]))}", highlight=False)
    # HParams: a few model keys and whatever the command line set (seed and task always).
    keys = [*DEFAULT_HPARAM_KEYS, *(o.partition("=")[0] for o in args.overrides)]
    keys = [k for k in dict.fromkeys(keys) if k not in NON_IDENTITY_KEYS]
    res = train(cfg, hparams=run_hparams(cfg, keys))
    if joined_process():  # another process of a multi-device run: the first one reports
        return 0 if res.status == "ok" else 1
    row = {
        "config": ", ".join(args.config) if args.config else "defaults",
        "family": res.config["model"]["family"],
        "plan": res.plan["description"],
        "params": res.costs.get("params"),
        "depth": res.costs.get("effective_depth"),
        "flops": res.costs.get("flops_per_token"),
        "val": res.metrics.get("val/acc_token"),
        "ood": res.metrics.get("ood/acc_token"),
        "val_bpb": res.metrics.get("val/bpb"),
        "ood_bpb": res.metrics.get("ood/bpb"),
        "wall": res.wall_time_s,
        "run_dir": res.run_dir,
    }
    out.print(run_table([row], "lab train"))
    if res.status != "ok":
        console.print(f"[red]run {res.status}: {escape(str(res.reason))}[/red]")
        return 1
    out.print(f"TensorBoard: tensorboard --logdir {escape(str(Path(res.run_dir).parent))} "
              "--host 127.0.0.1")
    return 0


def _config_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        files.extend(sorted(path.glob("*.yaml")) if path.is_dir() else [path])
    return files


def cmd_check(args) -> int:
    import torch

    from lab.config import load_config
    from lab.eval.cost import static_costs
    from lab.model import build_model, resolve
    from lab.study.spec import load_ablation
    from lab.tasks import eval_set

    torch.set_num_threads(1)
    rows, failures = [], 0
    targets = _config_files(args.paths or ["configs", "ablations"])
    for f in targets:
        try:
            if f.parent.name == "ablations" or "space" in (f.read_text() if f.is_file() else ""):
                abl = load_ablation(f)
                cfgs = [(f"{f.name} [{s.label}]", c) for s, c in abl.setting_configs()]
            else:
                cfgs = [(f.name, load_config([f]))]
            for label, cfg in cfgs:
                cfg, task, plan = resolve(cfg)
                model = build_model(cfg, task, plan)
                x, _ = eval_set(task, "val", 2)
                model(x)
                c = static_costs(model, plan, task)
                rows.append({"config": label, "family": cfg.model.family,
                             "plan": plan.describe(), "params": c["params"],
                             "depth": c["effective_depth"], "flops": c["flops_per_token"]})
        except LabError as e:
            failures += 1
            console.print(f"[red]{escape(str(f))}: {escape(str(e))}[/red]")
    out.print(run_table(rows, f"lab check: {len(rows)} configs built, one forward pass each"))
    return 2 if failures else 0


def cmd_sweep(args) -> int:
    from lab.study.identity import write_study_journal
    from lab.study.run import run_sweep
    from lab.study.spec import load_ablation

    rc = run_sweep(args.ablation, args.overrides, workers=args.workers)
    if rc not in (0, 1):
        return rc
    from lab.report import print_results, write_report  # after: the workers start sooner

    abl = load_ablation(args.ablation, args.overrides)
    if not rc and abl.config().eval.cost:
        from lab.study import costpass
        from lab.study.identity import load_existing_study

        console.print("timing every setting's decode latency in paired rounds ...")
        if abl.analysis_spec.context_costs is not None:
            console.print("and its KV bytes and decode latency against context length ...")
        costpass.ensure(abl, load_existing_study(abl))
    try:
        # What the report is made from, beside it: the study file a fresh clone reads.
        journal = write_study_journal(abl)
        console.print(f"study: {journal} ({journal.stat().st_size / 1e3:.0f} kB, an Optuna journal)",
                      highlight=False)
        print_results(abl)
        report_rc = write_report(args.ablation, args.overrides or [], quiet=False)
    except LabError:
        if not rc:  # with failures (rc 1) there may be nothing to report: keep rc
            raise
        report_rc = 1
    return rc or report_rc


def cmd_report(args) -> int:
    from lab.report import write_report

    return write_report(args.ablation, args.overrides, force=args.force)


def cmd_findings(args) -> int:
    from lab.provenance import REPO
    from lab.report.findings import update_readme

    readme = Path(args.readme) if args.readme else REPO / "README.md"
    reports = Path(args.reports) if args.reports else readme.parent / "reports"
    changed = update_readme(readme, reports, check=args.check)
    if args.check:
        console.print(f"{readme}: findings {'out of date: run `lab findings`' if changed else 'up to date'}")
        return 1 if changed else 0
    console.print(f"{readme}: findings {'rewritten' if changed else 'already up to date'} "
                  f"from {reports}/*/summary.json")
    return 0


def cmd_export(args) -> int:
    from lab.report.export import export_study

    path = export_study(args.ablation, args.overrides, fmt=args.format, out=args.out)
    console.print(f"exported: {path}")
    return 0


def cmd_compare(args) -> int:
    from lab.report.compare import write_compare

    paths = [a for a in args.ablations if "=" not in a]
    overrides = [*args.overrides, *(a for a in args.ablations if "=" in a)]
    out_dir, rows = write_compare(paths, overrides, args.out)
    table = Table(title=f"lab compare: {len(paths)} studies", header_style="bold")
    for col in ("study", "setting", "n", "mean ± CI"):
        table.add_column(col, justify="right" if col in ("n", "mean ± CI") else "left")
    for r in rows:
        table.add_row(r["study"], r["setting"], str(r["n"]), r["ci"])
    out.print(table)
    console.print(f"comparison: {out_dir / 'compare.md'} (and compare.html, compare.png)")
    return 0


def cmd_rerun(args) -> int:
    from lab.study.rerun import rerun, stored_value

    abl, setting, seed, res = rerun(args.ablation, args.setting, args.overrides,
                                    announce=lambda msg: console.print(escape(msg)))
    row = {"config": f"{abl.study}: {setting.label}, seed {seed}",
           "family": res.config["model"]["family"], "plan": res.plan["description"],
           "params": res.costs.get("params"), "depth": res.costs.get("effective_depth"),
           "flops": res.costs.get("flops_per_token"), "val": res.metrics.get("val/acc_token"),
           "ood": res.metrics.get("ood/acc_token"), "wall": res.wall_time_s,
           "run_dir": res.run_dir}
    out.print(run_table([row], "lab rerun"))
    stored = stored_value(abl, setting.label, seed)
    if stored is not None:
        now = res.metrics.get(abl.objective)
        out.print(f"{abl.objective}: stored trial {stored!r}, this run {now!r}"
                  + (" (identical)" if now == stored else ""))
    if res.status != "ok":
        console.print(f"[red]run {res.status}: {res.reason}[/red]")
        return 1
    out.print(f"TensorBoard: tensorboard --logdir {Path(res.run_dir).parent} --host 127.0.0.1")
    return 0


def cmd_sample(args) -> int:
    import torch

    from lab.eval.generate import generate
    from lab.study.sample import check_sampling, load_run, parse_prompt, trial_run_dir

    check_sampling(args.length, args.temperature)
    prompt = parse_prompt(args.prompt)
    if Path(args.target).is_dir():
        if args.setting is not None or args.overrides:
            raise LabError(f"'{args.target}' is a run directory: give no setting or key=value "
                           "after it (those name a trial of an ablation file).")
        run_dir, what = Path(args.target), "run"
    else:
        if args.setting is None:
            raise LabError(f"'{args.target}' is not a run directory; to sample a study's trial "
                           "give the ablation file, a setting and seed=N (as for lab rerun).")
        run_dir, what = trial_run_dir(args.target, args.setting, args.overrides)
    torch.set_num_threads(1)
    run = load_run(run_dir)
    loops = args.loops or run.loops
    g = torch.Generator().manual_seed(args.seed)
    new = generate(run.model, prompt, args.length, args.temperature, g, run.context, loops)
    console.print(
        f"{escape(what)} {escape(str(run.run_dir))} (step {run.step} of {run.steps}): "
        f"{args.length} bytes at temperature {args.temperature:g}, seed {args.seed}, "
        f"{loops} loop(s), a window of {run.context} bytes", highlight=False)
    sys.stdout.write(bytes(prompt + new).decode("utf-8", errors="replace") + "\n")
    sys.stdout.flush()
    return 0


def cmd_dashboard(args) -> int:
    from lab.study.dashboard import run_dashboard

    return run_dashboard(args.ablation, args.overrides, host=args.host, port=args.port,
                         announce=lambda msg: console.print(msg, highlight=False))


def cmd_bench(args) -> int:
    from lab.bench import run_bench

    return run_bench(quick=args.quick, out_dir=args.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lab", description="Architecture ablation lab: looped layers and width profiles."
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train one run")
    t.add_argument("--config", "-c", action="append", default=[],
                   help="YAML config file (repeatable; later files win)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.loops=3")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("check", help="build every config and ablation, one forward pass each")
    c.add_argument("paths", nargs="*", help="files or folders (default: configs/ ablations/)")
    c.set_defaults(func=cmd_check)

    s = sub.add_parser("sweep", help="run an ablation study (resumable)")
    s.add_argument("ablation", help="ablation file, e.g. ablations/loops.yaml")
    s.add_argument("overrides", nargs="*",
                   help="key=value: config keys (task.hops=8) or study keys (storage=..., seeds=[0,1])")
    s.add_argument("--workers", "-w", type=int, default=None,
                   help="worker processes (default: study.workers, else one per core)")
    s.set_defaults(func=cmd_sweep)

    r = sub.add_parser("report", help="write reports/<ablation>/report.md from the study storage")
    r.add_argument("ablation")
    r.add_argument("overrides", nargs="*", help="study keys, e.g. storage=...")
    r.add_argument("--force", action="store_true",
                   help="report even if the stored study was made from another ablation file")
    r.add_argument("--html", action="store_true",
                   help="also write report.html (always written; kept for clarity)")
    r.set_defaults(func=cmd_report)

    f = sub.add_parser("findings", help="write the README's findings from reports/*/summary.json")
    f.add_argument("--check", action="store_true",
                   help="only check: exit 1 when the README's findings are out of date")
    f.add_argument("--readme", default=None, help="the README (default: the repository's)")
    f.add_argument("--reports", default=None, help="reports folder (default: beside the README)")
    f.set_defaults(func=cmd_findings)

    e = sub.add_parser("export", help="one row per trial (setting, seed, state, metrics, costs)")
    e.add_argument("ablation")
    e.add_argument("overrides", nargs="*", help="config overrides and study keys, as for sweep")
    e.add_argument("--format", "-f", choices=("csv", "json", "parquet"), default="csv")
    e.add_argument("--out", "-o", default=None,
                   help="output file (default reports/<study>/trials.<format>)")
    e.set_defaults(func=cmd_export)

    rr = sub.add_parser("rerun", help="retrain one setting/seed of a study into runs/")
    rr.add_argument("ablation")
    rr.add_argument("setting", help='a setting label, e.g. "looped, loops=2" (or a unique part)')
    rr.add_argument("overrides", nargs="*", help="seed=N, and the sweep's config overrides")
    rr.set_defaults(func=cmd_rerun)

    cp = sub.add_parser("compare", help="one table and figure across studies")
    cp.add_argument("ablations", nargs="+", help="two or more ablation files")
    cp.add_argument("--out", default=None, help="output folder (default reports/compare/A+B)")
    cp.set_defaults(func=cmd_compare, overrides=[])

    sm = sub.add_parser("sample", help="generate bytes from a trained text-task run")
    sm.add_argument("target", help="a run directory (runs/NAME/version_N), or an ablation file")
    sm.add_argument("setting", nargs="?", default=None,
                    help="with an ablation file: the trial's setting (seed=N picks its seed)")
    sm.add_argument("overrides", nargs="*", help="seed=N, and the sweep's config overrides")
    sm.add_argument("--prompt", "-p", default="\\n",
                    help="the text to continue (backslash escapes such as \\n work; default a newline)")
    sm.add_argument("--length", "-n", type=int, default=256, help="bytes to generate")
    sm.add_argument("--temperature", "-t", type=float, default=0.8,
                    help="0: the most likely byte each step; higher: more random")
    sm.add_argument("--seed", "-s", type=int, default=0, help="the sampling seed")
    sm.add_argument("--loops", type=int, default=None,
                    help="loop count to decode at (default: the run's evaluation loops)")
    sm.set_defaults(func=cmd_sample)

    d = sub.add_parser("dashboard", help="optuna-dashboard on the study's own storage")
    d.add_argument("ablation")
    d.add_argument("overrides", nargs="*", help="config overrides and study keys, as for sweep")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8080)
    d.set_defaults(func=cmd_dashboard)

    b = sub.add_parser("bench", help="measure harness overhead and utilisation")
    b.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    b.add_argument("--out", default="reports/bench", help="where to write report.md")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options (lab sweep X --workers 2 seeds=[0]).
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args) or 0)
    except LabError as e:
        console.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False)
        return e.exit_code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        return 130
    finally:
        if argv is None:  # the `lab` command: the process ends after this
            exit_quickly()


def exit_quickly() -> None:
    """Spare the interpreter's final garbage collection over every object torch and
    Lightning created (about 2 s here): nothing is left to free at exit."""
    import gc

    gc.freeze()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
