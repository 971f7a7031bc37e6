"""The ``eoslab`` command line, generated with tyro from the typed configs themselves.

Every preset is a subcommand of ``eoslab run`` and every field of its `Experiment` (the rule's,
the compared processes', the probes', the stop rules') is a flag; a field's docstring is its help.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import tyro

from .errors import DamagedRunError, DamagedRunWarning, EoslabError, RunInterrupted, RunInUseError
from .experiments import DEFAULT_PRESET, PRESETS, Experiment

if TYPE_CHECKING:
    from .runner import RunStore

__all__ = ["main"]

EXIT_CODES = {
    0: "done",
    1: "a reproduction's prediction outside its tolerance",
    2: "bad usage or config (nothing ran)",
    3: "the run diverged (every metric measured before is kept)",
    4: (
        "a damaged run directory, an I/O error (the run is marked interrupted; nothing whole "
        "was changed) or a run directory another process is writing (refused)"
    ),
    130: "interrupted by SIGINT (Ctrl-C): every row measured and a checkpoint are saved; "
    "resumable with: eoslab resume DIR",
    143: "interrupted by SIGTERM (saved and resumable, as for 130)",
}

DESCRIPTION = (
    "eoslab: gradient descent at the Edge of Stability, measured exactly.\n\n"
    "examples:\n"
    "  eoslab list                                  the presets\n"
    "  eoslab run eos-gd --rule.lr 0.2 --out runs/a  a preset, any field overridden\n"
    "  eoslab run gd-central-flow --steps 500       GD, gradient flow and the central flow\n"
    "  eoslab run --config exp.yaml --steps 100     a config file (checked before any work)\n"
    "  eoslab resume runs/a                         continue a killed run to the same numbers\n"
    "  eoslab plot runs/a runs/b                    overlaid figures\n"
    "  eoslab report runs/a                         figures and a Markdown/HTML summary\n"
    "  eoslab sharpness runs/a --k 3                certified top eigenvalues at the checkpoint\n"
    "  eoslab reproduce flow-tracking --quick       a paper's experiment with its check table\n\n"
    "exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items())
)


def _opt(metavar: str, default: str) -> object:
    """A flag whose value is None unless given, its help saying what None means."""
    return tyro.conf.arg(metavar=metavar, help_behavior_hint=f"(default: {default})")


class _UsageError(Exception):
    """A usage error: printed on one line, exit code 2."""


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Options of ``eoslab run`` besides the experiment."""

    out: Annotated[Path | None, _opt("DIR", "runs/NAME-TIMESTAMP")] = None
    """The run directory to create; never overwritten."""
    config: Annotated[Path | None, _opt("FILE", "none, the preset")] = None
    """A JSON or YAML experiment config (or a run's config.json) to run instead of a preset;
    flags after it override it."""
    plot: bool = True
    """Write the run's figures when it ends."""
    quiet: bool = False
    """No progress bar."""
    data_dir: Annotated[Path | None, _opt("DIR", "problem.data_dir")] = None
    """Where the problem's on-disk dataset lives (sets problem.data_dir; checked before the run:
    a directory without the dataset's files is an error)."""


@dataclasses.dataclass(frozen=True)
class PresetRun(RunOptions):
    """A preset's subcommand: the run's options, then every field of its experiment."""

    experiment: Annotated[Experiment, tyro.conf.arg(name="")] = PRESETS[DEFAULT_PRESET]


Preset = tyro.extras.subcommand_type_from_defaults(
    {name: PresetRun(experiment=exp) for name, exp in PRESETS.items()},
    {name: exp.description for name, exp in PRESETS.items()},
)


@dataclasses.dataclass(frozen=True)
class RunCommand(RunOptions):
    """Run a preset (default eos-gd) with any field overridden, or a --config file."""

    preset: Annotated[Preset, tyro.conf.arg(name="")] = PresetRun()  # type: ignore[valid-type]
    """The preset to run (eoslab list); its fields are its flags: eoslab run PRESET --help."""


@dataclasses.dataclass(frozen=True)
class RunRequest(RunOptions):
    """What ``eoslab run`` runs: its options and the experiment (a preset with its overrides,
    or a config file's)."""

    experiment: Experiment = PRESETS[DEFAULT_PRESET]


@dataclasses.dataclass(frozen=True)
class Resume:
    """Continue a run directory from its last checkpoint (same numbers as an uninterrupted run)."""

    dir: tyro.conf.Positional[Path]
    """The run directory."""
    steps: Annotated[int | None, _opt("INT", "the recorded budget")] = None
    """Extend the step budget to this many steps (a finished run continues)."""
    plot: bool = True
    """Write the run's figures when it ends."""
    quiet: bool = False
    """No progress bar."""


@dataclasses.dataclass(frozen=True)
class List:
    """List the presets."""


@dataclasses.dataclass(frozen=True)
class Plot:
    """Plot one run (one line per process), or several overlaid."""

    dirs: Annotated[
        tyro.conf.Positional[tuple[Path, ...]],
        tyro.conf.arg(metavar="DIR", help_behavior_hint="(one or more)"),
    ]
    """Run directories."""
    out: Annotated[
        Path | None,
        _opt(
            "DIR|PNG",
            "one run: DIR/figures/overview.png; several: a new directory compare-A-B beside "
            "them, never in a run directory",
        ),
    ] = None
    """A directory to write overview.png or compare.png into, or a .png file."""


@dataclasses.dataclass(frozen=True)
class Report:
    """Write a run's figures and a Markdown + HTML summary (report.md, report.html)."""

    dir: tyro.conf.Positional[Path]
    """The run directory."""
    out: Annotated[Path | None, _opt("DIR", "the run directory")] = None
    """Where to write report.md, report.html and figures/."""


@dataclasses.dataclass(frozen=True)
class Sharpness:
    """Certified top-k Hessian eigenvalues at a run's last checkpoint."""

    dir: tyro.conf.Positional[Path]
    """The run directory."""
    process: Annotated[str | None, _opt("NAME", "the first process")] = None
    """Which process's point."""
    k: int = 3
    """How many top eigenvalues."""
    tol: Annotated[float | None, _opt("FLOAT", "1e-6 in float64, 1e-5 in float32")] = None
    """Relative tolerance of each certified bound (float32's rounding cannot certify below
    1.9e-6)."""


@dataclasses.dataclass(frozen=True)
class Memory:
    """XLA's compiled memory of a preset's step and probes, before a run (nothing runs)."""

    preset: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="PRESET")]
    """The preset (eoslab list), e.g. gpt-small."""
    batch: Annotated[int | None, _opt("INT", "the preset's mini-batch, else all its examples")] = (
        None
    )
    """Examples per step, over all devices."""
    devices: int = 1
    """Devices the batch is sharded over (parameters replicated on each)."""
    budget: str = "80GB"
    """Memory per device for the largest-batch estimate (80GB, 512MB, 79.6GiB, 8e10)."""
    remat: Literal["blocks", "dots"] = "blocks"
    """Rematerialization policy of the model's blocks for the second set of columns."""


@dataclasses.dataclass(frozen=True)
class Data:
    """Datasets: `eoslab data list`, or `eoslab data fetch NAME`."""

    action: tyro.conf.Positional[Literal["list", "fetch"]]
    """list or fetch."""
    name: Annotated[
        tyro.conf.Positional[str], tyro.conf.arg(metavar="NAME", help_behavior_hint="(fetch only)")
    ] = ""
    """The dataset to fetch."""
    data_dir: Annotated[Path | None, _opt("DIR", "$EOSLAB_DATA")] = None
    """Where datasets live."""


@dataclasses.dataclass(frozen=True)
class Demo:
    """Run the default preset (progressive sharpening, then the edge of stability) and plot it."""

    out: Path = Path("runs/demo")
    """Run directory (a timestamp is added if it exists)."""
    steps: Annotated[int | None, _opt("INT", "the preset's")] = None
    """Override the step budget."""


@dataclasses.dataclass(frozen=True)
class Reproduce:
    """Reproduce a paper experiment: figures plus a table of predicted vs measured numbers."""

    name: Annotated[
        tyro.conf.Positional[str],
        tyro.conf.arg(metavar="NAME", help_behavior_hint="(default: list them)"),
    ] = ""
    """The experiment."""
    quick: bool = False
    """The scaled-down variant (minutes on 2 CPU cores; no download needed: fashion-vgg reads
    Fashion-MNIST from Debian's package, make fashion-data)."""
    out: Annotated[Path | None, _opt("DIR", "runs/reproduce-NAME[-quick]-TIMESTAMP")] = None
    """Output directory; never overwritten."""
    data_dir: Annotated[Path | None, _opt("DIR", "the dataset's usual places")] = None
    """Where the experiment's on-disk dataset lives (cifar-vgg: CIFAR-10, fashion-vgg:
    Fashion-MNIST); only this directory is searched, and one without the files is an error."""


# ------------------------------------------------------------------------------ helpers
def _err(msg: str) -> None:
    print(f"eoslab: error: {msg}", file=sys.stderr)


def _read_config_file(path: Path) -> Experiment:
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
        raise _UsageError(
            f"--config {path}: not valid {path.suffix[1:] or 'JSON'}: {first}"
        ) from None
    if isinstance(data, dict) and "config" in data and "eoslab_version" in data:
        data = data["config"]  # a run's config.json
    try:
        return from_dict(data)
    except EoslabError as exc:
        raise _UsageError(f"--config {path}: {exc}") from None


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


def _execute(exp: Experiment, out: Path, *, resume: bool, quiet: bool, plot: bool) -> int:
    from .experiments import execute

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            run = execute(exp, out, resume=resume, progress=None if not quiet else False)
        except RunInterrupted as exc:  # every row measured and a checkpoint are saved
            _err(str(exc))
            return exc.exit_code
        except KeyboardInterrupt:
            _err(f"interrupted; everything flushed is kept; continue with: eoslab resume {out}")
            return 130
        except OSError as exc:  # the run marked itself interrupted, with the error
            if isinstance(exc, EoslabError) or not (out / "config.json").is_file():
                raise
            where = f" {exc.filename}" if exc.filename else ""
            _err(
                f"I/O error{where}: {exc.strerror or exc}; every whole file is kept; once this is "
                f"fixed, continue with: eoslab resume {out}"
            )
            return 4
    from .report.summary import summary_lines

    print(f"{run.status}: {run.message}")
    for line in summary_lines(run.metrics):  # each value with the step it was measured at
        print(f"  {line}")
    print(f"  run directory: {run.path}")
    if plot:
        print(f"  figure: {_plot([Path(run.path)], None)}")
    return 3 if run.diverged else 0


def _plot(dirs: list[Path], out: Path | None) -> Path:
    from .report import plot_runs
    from .runner import RunStore

    if not dirs:
        raise _UsageError("eoslab plot DIR [DIR ...]: give at least one run directory")
    for d in dirs:  # before anything is written: NotARunError (exit 2) or DamagedRunError (4)
        RunStore(d).require_run()
    name, given = ("overview.png" if len(dirs) == 1 else "compare.png"), out
    if out is None and len(dirs) == 1:
        out = dirs[0] / "figures" / name
    elif out is None:  # beside the runs: compare-A-B (kept if it is no run directory)
        stem = "compare-" + "-".join(d.resolve().name for d in dirs)
        base = dirs[0].resolve().parent / stem[:100]
        out = (_fresh_dir(base) if (base / "config.json").exists() else base) / name
    elif out.suffix.lower() != ".png":
        out = out / name
    if len(dirs) > 1:
        inside = _run_dir_above(out)
        if inside is not None:
            raise _UsageError(
                f"--out {given}: inside the run directory {inside}; a comparison of several runs "
                "is written outside them (e.g. --out compare/ or no --out: a directory beside them)"
            )
    return plot_runs(dirs, out)


def _run_dir_above(path: Path) -> Path | None:
    """The run directory (one with config.json and manifest.json) ``path`` is in, if any."""
    for parent in path.resolve().parents:
        if (parent / "config.json").is_file() and (parent / "manifest.json").is_file():
            return parent
    return None


def _recorded(path: Path) -> Experiment:
    from .experiments import from_dict
    from .runner import RunStore

    store = RunStore(path)
    if not store.exists():
        raise _UsageError(f"{path}: not a run directory (no config.json)")
    record = store.read_config()  # a damaged config.json raises DamagedRunError (exit 4)
    try:
        return from_dict(record["config"])
    except (EoslabError, KeyError, TypeError) as exc:
        raise _UsageError(
            f"{path}/config.json does not hold an eoslab run config ({exc}); a run made from "
            "Python with eoslab.runner.run resumes from Python: run(..., out=DIR, resume=True)"
        ) from None


# ------------------------------------------------------------------------------ commands
def _with_data_dir(exp: Experiment, data_dir: Path | None) -> Experiment:
    """``--data-dir DIR``: ``problem.data_dir = DIR``, the problem's dataset looked up there now
    (a `DatasetNotFoundError` naming ``--data-dir`` and the files expected: exit 2)."""
    if data_dir is None:
        return exp
    from .data import require
    from .experiments import ModelProblem

    if not isinstance(exp.problem, ModelProblem):
        raise _UsageError(
            f"--data-dir {data_dir}: only a network problem (problem kind 'model') reads a "
            f"dataset; this experiment's problem is {type(exp.problem).kind!r}"
        )
    require(exp.problem.dataset, data_dir, field="--data-dir")
    problem = dataclasses.replace(exp.problem, data_dir=str(data_dir))
    return dataclasses.replace(exp, problem=problem)


def _cmd_run(args: RunRequest, name: str) -> int:
    exp = _with_data_dir(args.experiment, args.data_dir)
    out = args.out if args.out is not None else _fresh_dir(Path("runs") / name)
    from .runner import RunStore

    RunStore(out).check_new()  # a run: resume it; other files: another --out (exit 2)
    return _execute(exp, out, resume=False, quiet=args.quiet, plot=args.plot)


def _cmd_resume(args: Resume) -> int:
    from .runner import RunStore

    exp = _recorded(args.dir)
    store = RunStore(args.dir)
    with store.lock("resume"):  # from the first look to the last figure: one writer
        return _resume_locked(args, exp, store)


def _resume_locked(args: Resume, exp: Experiment, store: RunStore) -> int:
    from .experiments import to_dict
    from .runner import RESUMABLE

    man = store.read_manifest()
    if args.steps is not None and args.steps != exp.steps:
        if args.steps < exp.steps:
            raise _UsageError(
                f"--steps {args.steps}: a run is extended, never shortened "
                f"(it has {exp.steps} steps)"
            )
        if man.get("status") not in (*RESUMABLE, "completed"):
            raise _UsageError(f"--steps: a {man.get('status')} run cannot be extended")
        exp = dataclasses.replace(exp, steps=args.steps)
        store.extend(to_dict(exp), args.steps)
        return _execute(exp, args.dir, resume=True, quiet=args.quiet, plot=args.plot)
    if store.verify().files:  # repaired by the resume: damaged files aside, lost rows recomputed
        return _execute(exp, args.dir, resume=True, quiet=args.quiet, plot=args.plot)
    if man.get("status") == "diverged":
        _err(f"{args.dir}: this run diverged ({man.get('message', '')}); nothing to resume")
        return 3
    if man.get("status") not in RESUMABLE:
        print(f"{args.dir}: already {man.get('status')} ({man.get('message', '')})")
        return 0
    return _execute(exp, args.dir, resume=True, quiet=args.quiet, plot=args.plot)


def _cmd_list() -> int:
    width = max(len(n) for n in PRESETS)
    for name, exp in PRESETS.items():
        star = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{width}}  {exp.description}{star}")
    return 0


def _cmd_sharpness(args: Sharpness) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from .curvature import top_eigenpairs
    from .experiments import build
    from .runner import load_run

    exp = _recorded(args.dir)
    run = load_run(args.dir)
    name = args.process or next(iter(run.final_points), None)
    if name not in run.final_points:
        have = ", ".join(run.final_points) or "none"
        raise _UsageError(f"--process {name}: no checkpointed point (have: {have})")
    with jax.enable_x64(exp.dtype == "float64"):
        obj = build(exp).objective.base()
        w = jnp.asarray(np.asarray(run.point(name)), obj.dtype)
        res = top_eigenpairs(obj, w, min(args.k, obj.dim), tol=args.tol)
    print(f"{args.dir} [{name}] at step {run.step}, {obj.dtype}: {int(res.matvecs)} HVPs")
    print(f"{'i':>3}  {'eigenvalue':>14}  {'certified bound':>16}  {'residual':>10}")
    for i, (v, b, r) in enumerate(zip(res.values, res.error_bound, res.residuals, strict=True)):
        print(f"{i + 1:>3}  {float(v):>14.8g}  {float(b):>16.3g}  {float(r):>10.3g}")
    if not bool(res.converged):
        print(
            "  not every bound met the tolerance: the HVP budget ran out, or rounding in "
            f"{obj.dtype} keeps it above (its floor is {float(res.error_bound.min()):.1e} here)"
        )
    return 0


def _cmd_memory(args: Memory) -> int:
    from .experiments import get_preset
    from .experiments.memory import format_report, memory_report
    from .parallel.memory import parse_bytes

    exp = get_preset(args.preset)
    budget = parse_bytes(args.budget)
    rep = memory_report(
        exp,
        batch=args.batch,
        devices=args.devices,
        budget_bytes=budget,
        remat=args.remat,
        progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True),
    )
    print(format_report(args.preset, rep))
    return 0


def _cmd_data(args: Data) -> int:
    from .data import commands

    if args.action == "list":
        print(commands.list_datasets_table())
        return 0
    if not args.name:
        raise _UsageError("eoslab data fetch NAME: give the dataset's name")
    commands.fetch_dataset(args.name, args.data_dir)
    return 0


def _cmd_demo(args: Demo) -> int:
    out = _fresh_dir(args.out)
    exp = PRESETS[DEFAULT_PRESET]
    if args.steps is not None:
        exp = dataclasses.replace(exp, steps=args.steps)
    print(f"eoslab demo: preset {DEFAULT_PRESET!r}: {exp.description}")
    exp = _described(exp, PRESETS[DEFAULT_PRESET], f"preset {DEFAULT_PRESET}")
    print(f"  writing to {out} ({exp.steps} steps; a few minutes on 2 CPU cores)")
    return _execute(exp, out, resume=False, quiet=False, plot=True)


def _cmd_reproduce(args: Reproduce) -> int:
    from .reproduce import REPRODUCTIONS

    if not args.name:
        for name, entry in REPRODUCTIONS.items():
            needs = f" [needs {entry.needs}]" if entry.needs else ""
            print(f"{name:<20} {entry.source}: {entry.description}{needs}")
        return 0
    if args.name not in REPRODUCTIONS:
        raise _UsageError(
            f"reproduce: unknown experiment {args.name!r}; expected one of "
            + ", ".join(REPRODUCTIONS)
        )
    entry = REPRODUCTIONS[args.name]
    if args.data_dir is not None:
        from .data import require

        if not entry.datasets:
            readers = [n for n, e in REPRODUCTIONS.items() if e.datasets]
            raise _UsageError(
                f"--data-dir {args.data_dir}: {args.name} reads no dataset from disk; expected "
                "no --data-dir, or an experiment that does: " + ", ".join(readers)
            )
        for dataset in entry.datasets:  # before any output is written
            require(dataset, args.data_dir, field="--data-dir")
    out = args.out
    if out is None:
        suffix = "-quick" if args.quick else ""
        out = _fresh_dir(Path("runs") / f"reproduce-{args.name}{suffix}")
    elif out.exists() and any(out.iterdir()):
        raise _UsageError(f"--out {out} exists and is not empty; choose another directory")
    data_dir = args.data_dir.expanduser() if args.data_dir is not None else None
    rows = entry(out, args.quick, data_dir)
    print((out / "table.md").read_text())
    print(f"figures and table in {out}")
    bad = [r for r in rows if not r["ok"]]
    if bad:
        print(f"{len(bad)} of {len(rows)} predictions outside their tolerance", file=sys.stderr)
        return 1
    return 0


COMMANDS = {
    "run": RunCommand,
    "resume": Resume,
    "list": List,
    "plot": Plot,
    "report": Report,
    "sharpness": Sharpness,
    "memory": Memory,
    "data": Data,
    "demo": Demo,
    "reproduce": Reproduce,
}


_RUN_FLAGS = {
    "--out": 1,
    "--config": 1,
    "--data-dir": 1,
    "--plot": 0,
    "--no-plot": 0,
    "--quiet": 0,
    "--no-quiet": 0,
}


def _split_run_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """``eoslab run PRESET --rule.lr 0.2 --out DIR``: the run's own options may come anywhere;
    returns (own options, the rest)."""
    own, rest, i = [], [], 0
    while i < len(argv):
        flag = argv[i].split("=", 1)[0]
        n = _RUN_FLAGS.get(flag)
        if n is None:
            rest.append(argv[i])
            i += 1
            continue
        take = 1 if "=" in argv[i] else 1 + n
        own += argv[i : i + take]
        i += take
    return own, rest


def _parse(argv: list[str]) -> tuple[object, str]:
    """The parsed command; for ``run``, also the run's name (preset or config file stem). The
    help shows the first paragraph of each config's docstring, in plain Unicode."""
    from .helptext import config_classes, plain_docstrings

    with plain_docstrings(config_classes([*COMMANDS.values(), PresetRun, Experiment])):
        return _parse_plain(argv)


def _parse_plain(argv: list[str]) -> tuple[object, str]:
    config = ()
    if argv[:1] == ["run"]:
        own, rest = _split_run_options(argv[1:])
        argv = ["run", *own, *rest]
    if argv[:1] == ["run"] and "--config" in own:
        if any(a in PRESETS for a in rest):
            raise _UsageError("give a PRESET or --config FILE, not both")
        opts = tyro.cli(RunOptions, args=own, prog="eoslab run")
        base = _read_config_file(opts.config)
        exp = tyro.cli(
            Experiment,
            default=base,
            args=rest,
            prog=f"eoslab run --config {opts.config}",
            config=(tyro.conf.AvoidSubcommands,),
        )
        exp = _described(exp, base, f"config {opts.config.name}")
        return RunRequest(**dataclasses.asdict(opts), experiment=exp), opts.config.stem
    args = tyro.extras.subcommand_cli_from_dict(
        COMMANDS, args=argv, prog="eoslab", description=DESCRIPTION, config=config
    )
    name = DEFAULT_PRESET
    if isinstance(args, RunCommand):
        picked = [a for a in argv[1:] if a in PRESETS]
        name = picked[0] if picked else DEFAULT_PRESET
        preset = args.preset
        # the run's options are hoisted before the preset (_split_run_options): the preset's own
        # copies (listed in its help) keep their defaults unless given some other way
        opts = {
            f.name: getattr(preset, f.name)
            if getattr(preset, f.name) != f.default
            else getattr(args, f.name)
            for f in dataclasses.fields(RunOptions)
        }
        exp = _described(preset.experiment, PRESETS[name], f"preset {name}")
        args = RunRequest(**opts, experiment=exp)
    return args, name


def _described(exp: Experiment, base: Experiment, source: str) -> Experiment:
    """``exp`` with the description that says what it runs (the effective config after the
    overrides; `eoslab.experiments.describe.saved_description`)."""
    from .experiments.describe import saved_description

    return dataclasses.replace(exp, description=saved_description(exp, base, source))


def _show_damage(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, DamagedRunWarning):
        print(f"eoslab: warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``eoslab`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", DamagedRunWarning)
        warnings.showwarning = _show_damage
        return _dispatch(argv)


def _dispatch(argv: list[str]) -> int:
    if argv[:1] in (["--version"], ["-V"]):
        from ._version import __version__

        print(f"eoslab {__version__}")
        return 0
    try:
        args, name = _parse(argv)
        if isinstance(args, RunRequest):
            return _cmd_run(args, name)
        if isinstance(args, Resume):
            return _cmd_resume(args)
        if isinstance(args, List):
            return _cmd_list()
        if isinstance(args, Plot):
            print(_plot(list(args.dirs), args.out))
            return 0
        if isinstance(args, Report):
            from .report.summary import write_report
            from .runner import RunStore

            RunStore(args.dir).require_run()  # nothing is written into a directory that is no run
            print(write_report(args.dir, args.out))
            return 0
        if isinstance(args, Sharpness):
            return _cmd_sharpness(args)
        if isinstance(args, Memory):
            return _cmd_memory(args)
        if isinstance(args, Data):
            return _cmd_data(args)
        if isinstance(args, Demo):
            return _cmd_demo(args)
        if isinstance(args, Reproduce):
            return _cmd_reproduce(args)
    except (DamagedRunError, RunInUseError) as exc:
        _err(str(exc))
        return 4
    except (_UsageError, EoslabError) as exc:
        _err(str(exc))
        return 2
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        _err(f"I/O error{where}: {exc.strerror or exc}")
        return 4
    except RunInterrupted as exc:
        _err(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _err("interrupted; continue with: eoslab resume DIR (everything flushed so far is kept)")
        return 130
    raise AssertionError(type(args))


if __name__ == "__main__":
    sys.exit(main())
