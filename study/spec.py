"""The study file (an INI file) and the grid of runs it defines.

A study file has three sections (docs/studies.md has a full example):

    [study]  base-config, mode, ranks, target, budget, options, ...
    [grid]   global-batch-sizes, lr, lr-rules, lr-multipliers (or lr-values),
             optimizers, seeds, batch-schedules (batch-schedules-B for
             global batch B only)
    [quick]  any key of the two above, replacing it in the --quick variant
             (a budget there replaces the per-batch budget-B keys too)

Two modes. `target` (the default) measures the steps each run needs to reach
the target; the best LR of a batch is the one that needs fewest. `fixed-budget`
trains every run for the same epochs without stopping at a target (Keskar et
al. 2017's comparison) and chooses each batch's LR by its final validation
accuracy.

Every run is one dtrain invocation: the base config plus the arguments built
here. A run's hash covers what decides its result (the arguments, the base
config's values, the ranks), so a finished run is reused only while none of
that changed; comments and order in the files do not count.
"""

import configparser
import hashlib
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

# Keys of each section, with their defaults (None: required).
STUDY_KEYS = {
    "name": "",
    "base-config": None,
    "ranks": "1",
    "max-micro-batch": "128",
    "min-micro-batches": "2",      # per optimizer step, all ranks together (--noise-scale needs 2)
    "mode": "target",              # target: steps to a target; fixed-budget: every run trains the same epochs
    "target": "",                  # METRIC:VALUE, dtrain's --target (required in mode target)
    "budget": None,                # epochs:N or steps:N; budget-B for global batch B only
    "options": "",                 # more dtrain options, for every run
    "checkpoint-every": "1000",    # steps; what a resumed run repeats at most
    "sbatch-options": "",          # the slurm executor's extra sbatch options
}
GRID_KEYS = {
    "global-batch-sizes": None,
    "lr": "0.1",                   # the LR at the base batch (dtrain's --lr)
    "lr-rules": "linear",          # linear, sqrt, none: dtrain's --lr-scaling
    "lr-multipliers": "1",         # times the rule's value; lr-multipliers-RULE for one rule
    "lr-values": "",               # absolute peak LRs instead (--lr-scaling none)
    "optimizers": "sgd",           # lr-OPTIMIZER and options-OPTIMIZER for one optimizer
    "seeds": "0",
    "batch-schedules": "constant",  # dtrain's --batch-schedule: constant, rampup:START:INCREMENT:SAMPLES, adaptive:START
}
LR_RULES = ("linear", "sqrt", "none")
TARGET_METRICS = ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "train_accuracy", "train_loss")
# Options the grid sets; a study's options may not set them again.
GRID_OPTIONS = {"--global-batch-size", "--micro-batch-size", "--grad-accum-steps", "--optimizer", "--seed",
                "--lr", "--lr-scaling", "--epochs", "--max-steps", "--target", "--out-dir", "--resume",
                "--checkpoint-every", "--config", "--batch-schedule"}
# Options that do not change what a run computes: left out of its hash.
UNHASHED_OPTIONS = {"--out-dir", "--resume", "--checkpoint-every"}


class SpecError(Exception):
    """A study file that cannot be run; the message names the key."""


@dataclass(frozen=True)
class Target:
    metric: str
    value: float

    @property
    def lower_is_better(self):
        return self.metric.endswith("_loss")

    def met(self, value):
        if value is None:
            return False
        return value <= self.value if self.lower_is_better else value >= self.value

    def __str__(self):
        return f"{self.metric}:{self.value:g}"


@dataclass
class Run:
    """One dtrain run of the grid."""
    run_id: str
    optimizer: str
    seed: int
    global_batch_size: int
    micro_batch_size: int
    grad_accum_steps: int
    lr_rule: str                 # linear, sqrt or none
    lr_multiplier: float | None  # None for an absolute LR (lr-values)
    lr: float                    # dtrain's --lr
    peak_lr: float               # lr x f(global / base)
    args: list = field(default_factory=list)  # dtrain arguments, without --config/--out-dir/--resume
    spec_hash: str = ""
    batch_schedule: str = "constant"  # dtrain's --batch-schedule; the global batch is its final batch

    def axes(self):
        return {"optimizer": self.optimizer, "seed": self.seed, "global_batch_size": self.global_batch_size,
                "micro_batch_size": self.micro_batch_size, "grad_accum_steps": self.grad_accum_steps,
                "lr_rule": self.lr_rule, "lr_multiplier": self.lr_multiplier, "lr": self.lr,
                "peak_lr": self.peak_lr, "batch_schedule": self.batch_schedule}


@dataclass
class Study:
    name: str
    path: Path
    base_config: Path
    ranks: int
    target: Target | None    # None in a fixed-budget study without one
    budget: tuple            # ("epochs" | "steps", N)
    budgets: dict            # global batch -> budget, where it differs
    base_batch_size: int
    checkpoint_every: int
    sbatch_options: list
    runs: list
    quick: bool
    mode: str = "target"

    @property
    def fixed_budget(self):
        return self.mode == "fixed-budget"

    def describe_budget(self):
        text = f"{self.budget[1]} {self.budget[0]}"
        batches = sorted(batch for batch in self.budgets if any(run.global_batch_size == batch for run in self.runs))
        if batches:
            text += " (" + ", ".join(f"{self.budgets[b][1]} {self.budgets[b][0]} at B={b}" for b in batches) + ")"
        return text


def parse_list(text, convert, key):
    items = [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]
    try:
        return [convert(item) for item in items]
    except ValueError:
        raise SpecError(f"{key}: cannot read '{text}' as a list of {convert.__name__} values") from None


def parse_target(text):
    metric, _, value = text.partition(":")
    if metric not in TARGET_METRICS or not value:
        raise SpecError(f"target: '{text}' is not METRIC:VALUE with METRIC one of {', '.join(TARGET_METRICS)}")
    try:
        return Target(metric, float(value))
    except ValueError:
        raise SpecError(f"target: '{value}' is not a number") from None


def parse_budget(text):
    kind, _, value = text.partition(":")
    if kind not in ("epochs", "steps") or not value.isdigit() or int(value) < 1:
        raise SpecError(f"budget: '{text}' is not epochs:N or steps:N")
    return kind, int(value)


def read_base_config(path):
    """The base dtrain config's name = value lines, as a dict (no sections)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            name, value = (part.strip() for part in line.split("=", 1))
            values[name] = value
    return values


def option_value(args, name):
    """The value of --name in an argument list (--name value or --name=value), else None."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def batch_split(global_batch, ranks, max_micro, min_micro_batches):
    """(micro, accum) for a global batch: the largest micro-batch up to
    max_micro that leaves at least min_micro_batches micro-batches per step
    across the ranks and divides the global batch exactly."""
    if global_batch % ranks:
        raise SpecError(f"global batch {global_batch} is not divisible by ranks = {ranks}")
    per_rank = global_batch // ranks
    min_accum = max(1, math.ceil(min_micro_batches / ranks))
    micro = min(max_micro, per_rank // min_accum)
    while micro > 0 and per_rank % micro:
        micro -= 1
    if micro < 1:
        raise SpecError(f"global batch {global_batch} on {ranks} rank(s) cannot be split into "
                        f"{min_micro_batches} micro-batches per step")
    return micro, per_rank // micro


def lr_factor(rule, global_batch, base_batch):
    ratio = global_batch / base_batch
    return {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[rule]


def run_hash(args, base_values, ranks):
    hashed = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in UNHASHED_OPTIONS:
            skip = True
            continue
        if arg.split("=", 1)[0] in UNHASHED_OPTIONS:
            continue
        hashed.append(arg)
    text = json.dumps({"args": hashed, "base_config": base_values, "ranks": ranks}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def format_number(value):
    return f"{value:.12g}"


def is_per_name(key):
    """lr-OPTIMIZER, options-OPTIMIZER and lr-multipliers-RULE (checked against the grid later)."""
    return key.startswith(("lr-", "options-")) and key not in GRID_KEYS


def is_per_batch(key):
    """budget-B: the budget of global batch B."""
    return key.startswith("budget-") and key[len("budget-"):].isdigit()


def is_per_batch_schedule(key):
    """batch-schedules-B: the schedules of global batch B."""
    return key.startswith("batch-schedules-") and key[len("batch-schedules-"):].isdigit()


def schedule_batches(text, batch, key):
    """The global batches a schedule trains with, ending at `batch` (its
    smallest and the steps between), checked as far as the study can;
    dtrain checks the rest."""
    kind, *numbers = text.split(":")
    try:
        numbers = [int(number) for number in numbers]
    except ValueError:
        numbers = None
    if kind == "constant" and not numbers:
        return [batch]
    if kind == "rampup" and numbers and len(numbers) == 3 and all(n > 0 for n in numbers):
        start, increment, _ = numbers
        if start >= batch or (batch - start) % increment:
            raise SpecError(f"{key}: '{text}' does not ramp to global batch {batch}: START must be below it and "
                            "the difference a multiple of INCREMENT")
        return [start, increment, batch]
    if kind == "adaptive" and numbers and len(numbers) == 1 and 0 < numbers[0] < batch:
        return [numbers[0], batch]
    raise SpecError(f"{key}: '{text}' is not constant, rampup:START:INCREMENT:SAMPLES or adaptive:START "
                    f"(START below the global batch {batch}; the study names the adaptive start)")


def schedule_split(batches, ranks, max_micro, min_micro_batches):
    """(micro, accum at the final batch) for a schedule: the largest
    micro-batch that divides every batch on it across the ranks and leaves
    min_micro_batches micro-batches at its smallest."""
    unit = math.gcd(*batches)
    micro, _ = batch_split(unit, ranks, max_micro, min_micro_batches)
    return micro, batches[-1] // ranks // micro


def read_values(path, quick):
    """The study file's keys with defaults filled in, [quick]'s applied when quick."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#",))
    parser.optionxform = str
    try:
        if not parser.read(path):
            raise SpecError(f"cannot read study file {path}")
    except configparser.Error as error:
        raise SpecError(f"{path}: {error}") from None
    unknown_sections = set(parser.sections()) - {"study", "grid", "quick"}
    if unknown_sections:
        raise SpecError(f"{path}: unknown section(s) {', '.join(sorted(unknown_sections))} "
                        "(known: study, grid, quick)")

    values = {}
    for section, keys in (("study", STUDY_KEYS), ("grid", GRID_KEYS)):
        values.update({key: default for key, default in keys.items()})
        if parser.has_section(section):
            for key, value in parser.items(section):
                if key not in keys and not (section == "grid" and (is_per_name(key) or is_per_batch_schedule(key))) \
                        and not (section == "study" and is_per_batch(key)):
                    raise SpecError(f"{path}: [{section}] has no key '{key}' (known: {', '.join(keys)})")
                values[key] = value
    if quick:
        if not parser.has_section("quick"):
            raise SpecError(f"{path}: --quick needs a [quick] section")
        quick_values = dict(parser.items("quick"))
        if "budget" in quick_values:  # a new budget replaces the per-batch ones too
            values = {key: value for key, value in values.items() if not is_per_batch(key)}
        for key, value in quick_values.items():
            if key not in values and not is_per_name(key) and not is_per_batch(key) \
                    and not is_per_batch_schedule(key):
                raise SpecError(f"{path}: [quick] overrides '{key}', which is no key of [study] or [grid]")
            values[key] = value
    missing = [key for key, value in values.items() if value is None]
    if missing:
        raise SpecError(f"{path}: missing {', '.join(missing)}")
    return values


def load(path, root, quick=False):
    """Reads a study file into a Study with its runs. Relative paths in it
    (base-config) are taken from the dtrain checkout, root."""
    path = Path(path)
    values = read_values(path, quick)

    base_config = Path(values["base-config"])
    if not base_config.is_absolute():
        base_config = Path(root) / base_config
    if not base_config.is_file():
        raise SpecError(f"base-config: {base_config} does not exist")
    base_values = read_base_config(base_config)

    try:
        ranks = int(values["ranks"])
        max_micro = int(values["max-micro-batch"])
        min_micro_batches = int(values["min-micro-batches"])
        checkpoint_every = int(values["checkpoint-every"])
    except ValueError as error:
        raise SpecError(f"{path}: {error}") from None
    mode = values["mode"]
    if mode not in ("target", "fixed-budget"):
        raise SpecError(f"mode: '{mode}' is not target or fixed-budget")
    if mode == "target" and not values["target"]:
        raise SpecError(f"{path}: missing target (mode target measures the steps to it)")
    target = parse_target(values["target"]) if values["target"] else None
    budget = parse_budget(values["budget"])
    budgets = {int(key[len("budget-"):]): parse_budget(value) for key, value in values.items() if is_per_batch(key)}
    options = shlex.split(values["options"])
    if mode == "fixed-budget":
        if budget[0] != "epochs" or budgets:
            raise SpecError(f"{path}: mode fixed-budget trains every run for the same epochs: give budget = "
                            "epochs:N and no budget-B keys")
        stop = option_value(options, "--stop-at-target")
        if stop is not None and stop.lower() in ("true", "1", "yes", "on"):
            raise SpecError("options: --stop-at-target true ends runs at the target; mode fixed-budget trains "
                            "every run for the whole budget")
    for arg in options:
        if arg.split("=", 1)[0] in GRID_OPTIONS:
            raise SpecError(f"options: {arg} is set by the study for each run; use the study's keys instead")
    base_batch = int(option_value(options, "--base-batch-size") or base_values.get("base-batch-size", 256))

    batches = parse_list(values["global-batch-sizes"], int, "global-batch-sizes")
    optimizers = parse_list(values["optimizers"], str, "optimizers")
    seeds = parse_list(values["seeds"], int, "seeds")
    lr_values = parse_list(values["lr-values"], float, "lr-values")
    rules = parse_list(values["lr-rules"], str, "lr-rules")
    for rule in rules:
        if rule not in LR_RULES:
            raise SpecError(f"lr-rules: '{rule}' is not one of {', '.join(LR_RULES)}")
    # (rule, multiplier) pairs, or ("none", None) with an absolute LR.
    if lr_values:
        lr_points = [("none", None, value) for value in lr_values]
    else:
        lr_points = []
        for rule in rules:
            key = f"lr-multipliers-{rule}"
            multipliers = parse_list(values.get(key, values["lr-multipliers"]), float, key)
            lr_points += [(rule, multiplier, None) for multiplier in multipliers]

    for key in values:
        if is_per_batch_schedule(key) and int(key[len("batch-schedules-"):]) not in batches:
            raise SpecError(f"{path}: '{key}' names no global batch of the grid ({', '.join(map(str, batches))})")
        if is_per_name(key):
            prefix, name = ("lr-multipliers", key[len("lr-multipliers-"):]) if key.startswith("lr-multipliers-") \
                else key.split("-", 1)
            known = rules if prefix == "lr-multipliers" else optimizers
            if name not in known:
                raise SpecError(f"{path}: '{key}' names no {'LR rule' if known is rules else 'optimizer'} "
                                f"of the grid ({', '.join(known)})")

    runs = []
    for optimizer in optimizers:
        base_lr = float(values.get(f"lr-{optimizer}", values["lr"]))
        optimizer_options = shlex.split(values.get(f"options-{optimizer}", ""))
        for seed in seeds:
            for batch in batches:
                key = f"batch-schedules-{batch}" if f"batch-schedules-{batch}" in values else "batch-schedules"
                schedules = parse_list(values[key], str, key)
                # One split for every arm of a batch, so that their wall times compare schedules, not splits.
                micro, accum = schedule_split([b for schedule in schedules for b in schedule_batches(schedule, batch, key)],
                                              ranks, max_micro, min_micro_batches)
                kind, length = budgets.get(batch, budget)
                for schedule in schedules:
                    for rule, multiplier, absolute in lr_points:
                        lr = float(f"{absolute if multiplier is None else base_lr * multiplier:.12g}")
                        peak = lr * lr_factor(rule, batch, base_batch)
                        lr_label = f"lr{format_number(lr)}" if multiplier is None else f"{rule}-x{format_number(multiplier)}"
                        run_id = f"b{batch:05d}-{lr_label}-{optimizer}-s{seed}"
                        schedule_args = []
                        if schedule != "constant":
                            run_id += "-" + schedule.replace(":", "-")
                            schedule_args = ["--batch-schedule", schedule]
                        args = ["--global-batch-size", str(batch), "--micro-batch-size", str(micro),
                                "--grad-accum-steps", str(accum), "--optimizer", optimizer, "--seed", str(seed),
                                "--lr-scaling", rule, "--lr", format_number(lr),
                                "--epochs" if kind == "epochs" else "--max-steps", str(length),
                                *(["--target", str(target)] if target else []), *schedule_args, *options,
                                *optimizer_options,
                                "--checkpoint-every", str(checkpoint_every)]
                        runs.append(Run(run_id, optimizer, seed, batch, micro, accum, rule, multiplier, lr, peak,
                                        args, run_hash(args, base_values, ranks), schedule))
    ids = [run.run_id for run in runs]
    duplicates = sorted({run_id for run_id in ids if ids.count(run_id) > 1})
    if duplicates:
        raise SpecError(f"the grid names runs twice: {', '.join(duplicates)}")
    if not runs:
        raise SpecError(f"{path}: the grid is empty")
    name = values["name"] or path.stem
    return Study(name, path, base_config, ranks, target, budget, budgets, base_batch, checkpoint_every,
                 shlex.split(values["sbatch-options"]), runs, quick, mode)
