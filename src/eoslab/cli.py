"""The ``eoslab`` command line, generated from typed dataclasses with tyro.

    eoslab run PRESET [--steps N] [--lr X] [--out DIR]   run a preset, with overrides
    eoslab run --config FILE [--out DIR]                 run a JSON/YAML config (validated first)
    eoslab run --resume DIR                              continue a killed run to the same numbers
    eoslab list                                          the presets
    eoslab plot DIR [DIR ...] [--out PNG]                figures of one or several runs
    eoslab data list | eoslab data fetch NAME            datasets
    eoslab demo                                          the default preset, figures included
    eoslab reproduce [NAME] [--quick] [--out DIR]        the papers' experiments (no NAME: list)

Exit codes: 0 done, 2 bad usage or config (nothing was run), 3 the run diverged.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Literal

import tyro

from .errors import EoslabError
from .experiments.presets import DEFAULT_PRESET, PRESETS

__all__ = ["main"]

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


class _UsageError(Exception):
    """A usage error: printed on one line, exit code 2."""


@dataclasses.dataclass(frozen=True)
class Run:
    """Run an experiment: a preset (with overrides), a config file, or resume a run directory."""

    preset: tyro.conf.Positional[PresetName | None] = None  # type: ignore[valid-type]
    """A preset name (see `eoslab list`); the default is eos-gd."""
    config: Path | None = None
    """A JSON or YAML experiment config (checked before anything runs)."""
    resume: Path | None = None
    """Continue the run in this directory from its last checkpoint."""
    out: Path | None = None
    """The run directory to create (default: runs/NAME-TIMESTAMP); never overwritten."""
    steps: int | None = None
    """Override the step budget."""
    lr: float | None = None
    """Override the learning rate."""
    seed: int | None = None
    """Override the seed."""
    probe_every: int | None = None
    """Override how often curvature is probed (steps)."""
    n: int | None = None
    """Override the number of training examples."""
    eigs: int | None = None
    """Override how many top Hessian eigenvalues are tracked."""
    devices: int | None = None
    """Shard the training examples over this many devices (same numbers as one device)."""
    microbatch: int | None = None
    """Accumulate loss, gradient and HVPs over micro-batches of this many examples."""
    plot: bool = True
    """Write the run's figures when it ends."""
    quiet: bool = False
    """No progress bar."""


@dataclasses.dataclass(frozen=True)
class List:
    """List the presets."""


@dataclasses.dataclass(frozen=True)
class Plot:
    """Plot one run, or several overlaid."""

    dirs: tyro.conf.Positional[tuple[Path, ...]]
    """Run directories."""
    out: Path | None = None
    """The PNG to write (default: DIR/figures/overview.png, or DIR/figures/compare.png)."""


@dataclasses.dataclass(frozen=True)
class Data:
    """Datasets: `eoslab data list`, or `eoslab data fetch NAME`."""

    action: tyro.conf.Positional[Literal["list", "fetch"]]
    """list or fetch."""
    name: tyro.conf.Positional[str | None] = None
    """The dataset to fetch."""
    data_dir: Path | None = None
    """Where datasets live (default: $EOSLAB_DATA)."""


@dataclasses.dataclass(frozen=True)
class Demo:
    """Run the default preset (progressive sharpening, then the edge of stability) and plot it."""

    out: Path = Path("runs/demo")
    """Run directory (a timestamp is added if it exists)."""
    steps: int | None = None
    """Override the step budget."""


@dataclasses.dataclass(frozen=True)
class Reproduce:
    """Reproduce a paper experiment: figures plus a table of predicted vs measured numbers."""

    name: tyro.conf.Positional[str | None] = None
    """The experiment (omit it to list them)."""
    quick: bool = False
    """The scaled-down variant (minutes on 2 CPU cores; no downloaded data needed)."""
    out: Path | None = None
    """Output directory (default: runs/reproduce-NAME[-quick]-TIMESTAMP); never overwritten."""


# ------------------------------------------------------------------------------ helpers
def _err(msg: str) -> None:
    print(f"eoslab: error: {msg}", file=sys.stderr)


def _load_config_file(path: Path):
    from .experiments import from_dict

    if not path.is_file():
        raise _UsageError(f"--config {path}: no such file")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is a usage error
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        kind = path.suffix[1:] or "JSON"
        raise _UsageError(f"--config {path}: not valid {kind}: {first}") from None
    if isinstance(data, dict) and "config" in data and "eoslab_version" in data:
        data = data["config"]  # a run's config.json
    try:
        return from_dict(data)
    except EoslabError as exc:
        raise _UsageError(f"--config {path}: {exc}") from None


def _apply_overrides(exp, args: Run):
    from .errors import ConfigError

    changes = {}
    for name in ("steps", "seed", "probe_every", "devices", "microbatch"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    try:
        if args.lr is not None:
            changes["rule"] = dataclasses.replace(exp.rule, lr=args.lr)
        if args.n is not None:
            if not any(f.name == "n" for f in dataclasses.fields(exp.problem)):
                raise ConfigError("n", args.n, f"no --n for a {exp.problem.kind} problem")
            changes["problem"] = dataclasses.replace(exp.problem, n=args.n)
        if args.eigs is not None:
            changes["probes"] = dataclasses.replace(exp.probes, k=args.eigs)
        return dataclasses.replace(exp, **changes)
    except ConfigError as exc:
        raise _UsageError(f"--{exc.field.split('.')[-1].replace('_', '-')}: {exc}") from None


def _fresh_dir(base: Path) -> Path:
    if not base.exists() or (base.is_dir() and not any(base.iterdir())):
        return base
    stamp = time.strftime("%Y%m%d-%H%M%S")
    cand = base.with_name(f"{base.name}-{stamp}")
    i = 1
    while cand.exists():
        cand = base.with_name(f"{base.name}-{stamp}-{i}")
        i += 1
    return cand


def _execute(exp, out: Path, *, resume: bool, quiet: bool, plot: bool) -> int:
    from .experiments import build, to_dict
    from .runner import train

    try:
        built = build(exp)
    except EoslabError as exc:
        raise _UsageError(str(exc)) from None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run = train(
            built.objective,
            built.rule,
            exp.steps,
            probe_every=exp.probe_every,
            probes=built.probes,
            out=out,
            stop=built.stop,
            seed=exp.seed,
            log_every=exp.log_every,
            flush_seconds=exp.flush_seconds,
            resume=resume,
            config=to_dict(exp),
            progress=None if not quiet else False,
            devices=exp.devices,
            microbatch=exp.microbatch,
        )
    df = run.metrics
    last = df.iloc[-1] if len(df) else None
    probed = df[df["sharpness"].notna()] if "sharpness" in df else df.iloc[0:0]
    summary = f"{run.status}: {run.message}"
    if last is not None:
        summary += f"\n  final loss {last['loss']:.6g} at step {int(last['step'])}"
    if len(probed):
        p = probed.iloc[-1]
        curv = (
            p["eff_sharpness"]
            if "eff_sharpness" in p and p["eff_sharpness"] == p["eff_sharpness"]
            else p["sharpness"]
        )
        summary += f"; sharpness {curv:.4g} (threshold {p['threshold']:.4g})"
    print(summary)
    print(f"  run directory: {run.path}")
    if plot:
        fig = _plot([Path(run.path)], None)
        print(f"  figure: {fig}")
    return 3 if run.diverged else 0


def _plot(dirs: list[Path], out: Path | None) -> Path:
    from .report import plot_runs

    for d in dirs:
        if not (d / "config.json").is_file():
            raise _UsageError(f"{d}: not a run directory (no config.json)")
    if out is None:
        out = dirs[0] / "figures" / ("overview.png" if len(dirs) == 1 else "compare.png")
    return plot_runs(dirs, out)


def _cmd_run(args: Run) -> int:
    from .experiments import from_dict, get_preset
    from .runner import RunStore

    given = [x for x in (args.preset, args.config, args.resume) if x is not None]
    if len(given) > 1:
        raise _UsageError("give one of PRESET, --config FILE, --resume DIR")
    if args.resume is not None:
        store = RunStore(args.resume)
        if not store.exists():
            raise _UsageError(f"--resume {args.resume}: not a run directory (no config.json)")
        others = [
            n
            for n in ("steps", "lr", "seed", "probe_every", "n", "eigs", "out")
            if getattr(args, n) is not None
        ]
        if others:
            raise _UsageError(f"--resume continues the recorded config; drop --{others[0]}")
        man = store.read_manifest()
        if man.get("status") == "diverged":
            _err(f"{args.resume}: this run diverged ({man.get('message', '')}); nothing to resume")
            return 3
        try:
            exp = from_dict(store.read_config()["config"])
        except EoslabError as exc:
            raise _UsageError(f"{args.resume}/config.json: {exc}") from None
        if man.get("status") not in ("running", "unknown"):
            print(f"{args.resume}: already {man.get('status')} ({man.get('message', '')})")
            return 0
        return _execute(exp, args.resume, resume=True, quiet=args.quiet, plot=args.plot)
    if args.config is not None:
        exp = _load_config_file(args.config)
        name = args.config.stem
    else:
        name = args.preset or DEFAULT_PRESET
        exp = get_preset(name)
    exp = _apply_overrides(exp, args)
    out = args.out if args.out is not None else _fresh_dir(Path("runs") / name)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise _UsageError(
            f"{out} already exists and is not empty; eoslab never overwrites a run. "
            f"Choose another --out, or continue it with: eoslab run --resume {out}"
        )
    return _execute(exp, out, resume=False, quiet=args.quiet, plot=args.plot)


def _cmd_list() -> int:
    width = max(len(n) for n in PRESETS)
    for name, exp in PRESETS.items():
        star = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{width}}  {exp.description}{star}")
    return 0


def _cmd_data(args: Data) -> int:
    try:
        from .data import commands
    except ImportError as exc:
        raise _UsageError(f"the datasets module is not available ({exc})") from None
    if args.action == "list":
        print(commands.list_datasets_table())
        return 0
    if not args.name:
        raise _UsageError("eoslab data fetch NAME: give the dataset's name")
    try:
        commands.fetch(args.name, args.data_dir)
    except EoslabError as exc:
        raise _UsageError(str(exc)) from None
    return 0


def _cmd_demo(args: Demo) -> int:
    out = _fresh_dir(args.out)
    exp = PRESETS[DEFAULT_PRESET]
    if args.steps is not None:
        exp = dataclasses.replace(exp, steps=args.steps)
    print(f"eoslab demo: preset {DEFAULT_PRESET!r}: {exp.description}")
    print(f"  writing to {out} ({exp.steps} steps; a few minutes on 2 CPU cores)")
    return _execute(exp, out, resume=False, quiet=False, plot=True)


def _cmd_reproduce(args: Reproduce) -> int:
    from . import reproduce

    if args.name is None:
        for name in reproduce.names():
            exp = reproduce.get(name)
            needs = f" [needs {exp.needs}]" if exp.needs else ""
            print(f"{name:<20} {exp.source}: {exp.description}{needs}")
        return 0
    if args.name not in reproduce.names():
        raise _UsageError(
            f"reproduce: unknown experiment {args.name!r}; expected one of "
            + ", ".join(reproduce.names())
        )
    suffix = "-quick" if args.quick else ""
    out = args.out
    if out is None:
        out = _fresh_dir(Path("runs") / f"reproduce-{args.name}{suffix}")
    elif out.exists() and any(out.iterdir()):
        raise _UsageError(f"--out {out} exists and is not empty; choose another directory")
    rows = reproduce.run(args.name, out, quick=args.quick)
    print((out / "table.md").read_text())
    print(f"figures and table in {out}")
    bad = [r for r in rows if not r["ok"]]
    if bad:
        print(f"{len(bad)} of {len(rows)} predictions outside their tolerance", file=sys.stderr)
        return 1
    return 0


COMMANDS = {
    "run": Run,
    "list": List,
    "plot": Plot,
    "data": Data,
    "demo": Demo,
    "reproduce": Reproduce,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``eoslab`` command; returns the exit code."""
    args = tyro.extras.subcommand_cli_from_dict(
        COMMANDS, args=argv, prog="eoslab", description=__doc__.splitlines()[0]
    )
    try:
        if isinstance(args, Run):
            return _cmd_run(args)
        if isinstance(args, List):
            return _cmd_list()
        if isinstance(args, Plot):
            print(_plot(list(args.dirs), args.out))
            return 0
        if isinstance(args, Data):
            return _cmd_data(args)
        if isinstance(args, Demo):
            return _cmd_demo(args)
        if isinstance(args, Reproduce):
            return _cmd_reproduce(args)
    except _UsageError as exc:
        _err(str(exc))
        return 2
    except EoslabError as exc:
        _err(str(exc))
        return 2
    except KeyboardInterrupt:
        _err("interrupted; continue with --resume (everything flushed so far is kept)")
        return 130
    raise AssertionError(type(args))


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
