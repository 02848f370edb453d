# This file is part of meas_rbnet.
"""``rbnet train``: train, calibrate, evaluate and write a triplet model package.

The labelled stamps come from ``.npz`` files (``--data``, as written by
``rbnet simulate stamps``) and/or are simulated on the fly (``--simulate N``).
A stratified test split (``--test-fraction``) is held out from everything: the
model is trained and calibrated on the rest (which is split again into training
and validation), then the CNN and the logistic-regression baseline are both
evaluated on the test split and shown side by side. The package is written to
``--out`` and the metrics to ``OUT`` with the suffix ``.metrics.json``.

Fine-tuning (``--init PACKAGE``, ``default`` for the shipped model): the network
starts from the package's weights. Stamp size, channels, normalisation,
architecture and widths are the package's; giving one of those options with
another value is refused (the new stamps are prepared with the package's
contract). ``--lr`` defaults to `training.loop.FINE_TUNE_LEARNING_RATE` (3e-4,
a tenth of the from-scratch 3e-3), the class-head loss is off when the package
has none, and ``--freeze-features`` trains only the head (``--lr`` then defaults
to `training.loop.FINE_TUNE_HEAD_LEARNING_RATE`, 3e-3). The test table shows
the init package beside the fine-tuned model. See ``doc/fine-tuning.md``.
"""

__all__ = ["train"]

import dataclasses
import json
import shlex
from pathlib import Path

import click

from ..constants import CHANNEL_ORDER, DEFAULT_STAMP_SIZE, DIFFERENCE_ONLY
from ..contract import NORMALIZATIONS, InputContract
from ..fileio import write_atomic
from ..sim import simulate_stamps
from ._options import FINITE_FLOAT, FiniteFloatRange, choice_option

#: Losses offered on the command line (kept in sync with `training.losses.LOSSES`, checked in the tests).
_LOSSES = ("bce", "focal", "tversky", "bce+tversky")
#: Above this many stamps the prepared arrays are kept as float16 (half the memory).
_FLOAT16_ABOVE = 50_000
#: Offset of the test-split seed from ``--seed``, so the test split differs from the validation split.
_TEST_SEED_OFFSET = 7919


def _command_line(ctx: click.Context) -> str:
    """The command as it could be re-typed: non-default options, file names without directories."""
    parts = ["rbnet", "train"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or (param.multiple and not value):
            continue
        if isinstance(param, click.Option) and param.is_flag:
            if param.secondary_opts:
                parts.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                parts.append(param.opts[0])
            continue
        values = value if param.multiple else (value,)
        for v in values:
            if isinstance(param.type, click.Path):
                # Never record a directory of the machine that trained the model.
                v = Path(v).name
            parts += [param.opts[0], str(v)]
    return " ".join(shlex.quote(p) for p in parts)


def _load_data(files, n_simulate, sim_seed, contract, mask_fraction, seed, console):
    """Prepared labelled stamps from npz files and/or the simulator."""
    import numpy as np

    # torch (training.data): imported when training runs, not by `rbnet train --help`.
    from ..training.data import PreparedStamps, load_npz, prepare_dataset

    parts = []
    sources = []
    for f in files:
        try:
            arrays = load_npz(f)
        except (ValueError, OSError) as err:
            raise click.ClickException(str(err)) from None
        n = len(arrays["labels"])
        dtype = np.float16 if n > _FLOAT16_ABOVE else np.float32
        try:
            parts.append(
                prepare_dataset(
                    arrays["stamps"], arrays["labels"], contract, classes=arrays["classes"], snr=arrays["snr"],
                    masks=arrays["masks"], mask_fraction=mask_fraction, seed=seed + len(parts), dtype=dtype,
                )
            )  # fmt: skip
        except ValueError as err:
            raise click.ClickException(f"{f}: {err}") from None
        sources.append({"file": Path(f).name, "n": n, "masks": arrays["masks"] is not None})
        console.print(f"read {n} stamps from {Path(f).name}")
    if n_simulate:
        from rich.progress import Progress

        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"simulating {n_simulate} triplets", total=n_simulate)
            sim = simulate_stamps(
                n_simulate,
                stamp_size=contract.stamp_size,
                seed=sim_seed,
                with_masks=True,
                progress=lambda done, total: bar.update(task, completed=done),
            )
        table = sim.table
        dtype = np.float16 if n_simulate > _FLOAT16_ABOVE else np.float32
        parts.append(
            prepare_dataset(
                sim.stamps, np.asarray(table["label"]), contract, classes=np.asarray(table["source_class"]),
                snr=np.asarray(table["snr"]), masks=sim.masks, mask_fraction=mask_fraction, seed=seed + len(parts),
                dtype=dtype,
            )
        )  # fmt: skip
        del sim
        sources.append({"simulated": n_simulate, "sim_seed": sim_seed, "stamp_size": contract.stamp_size})
        console.print(f"simulated {n_simulate} stamps (seed {sim_seed})")
    if any(p.classes is None for p in parts) and any(p.classes is not None for p in parts):
        parts = [dataclasses.replace(p, classes=None) for p in parts]
    if any(p.snr is None for p in parts) and any(p.snr is not None for p in parts):
        parts = [dataclasses.replace(p, snr=None) for p in parts]
    data = PreparedStamps.concatenate(parts) if len(parts) > 1 else parts[0]
    return data, sources


#: Options (parameter names) whose values the ``--init`` package fixes: its contract and architecture.
_INIT_FIXED = ("channels", "stamp_size", "normalization", "architecture", "widths")


def _init_label(init: str, package) -> str:
    """How messages name the init package (file name only, never a directory)."""
    return f"init package {Path(init).name!r} (version {package.version!r})"


def _init_options(ctx: click.Context, init: str, kfold: int):
    """Load the ``--init`` package; return it, the option values it implies and its path.

    Options fixed by the package (contract and architecture) that were given on the
    command line with another value are refused; the learning rate and the class-head
    weight get fine-tuning defaults when not given.
    """
    # torch (package, scoring, training): imported when training runs, not by `rbnet train --help`.
    from ..package import ModelPackageError
    from ..scoring import default_model_path
    from ..training.loop import FINE_TUNE_HEAD_LEARNING_RATE, FINE_TUNE_LEARNING_RATE, load_init_package

    if kfold:
        raise click.UsageError("--kfold is not available with --init; fine-tune without it.")
    path = default_model_path() if init == "default" else Path(init)
    if not path.is_file():
        raise click.BadParameter(f"model package {init!r} does not exist.", param_hint="--init")
    try:
        package, _ = load_init_package(path)
    except ModelPackageError as err:
        raise click.BadParameter(str(err), param_hint="--init") from None
    label = _init_label(init, package)
    spec = package.components["classifier"]
    hp = spec.hyperparameters
    contract = package.contract
    implied = {
        "channels": "triplet" if len(contract.channels) == len(CHANNEL_ORDER) else "difference",
        "stamp_size": contract.stamp_size,
        "normalization": contract.normalization,
        "architecture": spec.architecture,
        "widths": ",".join(str(w) for w in hp["widths"]) if "widths" in hp else None,
    }
    if tuple(contract.channels) not in (tuple(CHANNEL_ORDER), tuple(DIFFERENCE_ONLY)):
        raise click.BadParameter(
            f"{label} reads channels {contract.channels}; rbnet train makes triplet or difference-only "
            "stamps.",
            param_hint="--init",
        )
    wrong = []
    for name in _INIT_FIXED:
        given = ctx.params.get(name)
        if ctx.get_parameter_source(name) is click.core.ParameterSource.DEFAULT or given is None:
            continue
        if name == "widths":
            # Compared as written, spaces aside: anything but the package's list (even text) is refused.
            same = str(given).replace(" ", "") == implied["widths"]
        else:
            same = given == implied[name]
        if not same:
            wrong.append(f"--{name.replace('_', '-')} {given} (the package has {implied[name]})")
    if wrong:
        raise click.UsageError(
            f"{label} fixes the stamp size, channels, normalization and architecture of the model it "
            f"fine-tunes; contradicting options: {', '.join(wrong)}. Leave them out with --init."
        )
    # Only the head moves with --freeze-features: the from-scratch rate suits it (bench_finetune.py).
    implied["lr"] = (
        FINE_TUNE_HEAD_LEARNING_RATE if ctx.params.get("freeze_features") else FINE_TUNE_LEARNING_RATE
    )
    no_head = not hp.get("n_classes")
    class_weight_given = ctx.get_parameter_source("class_weight") is not click.core.ParameterSource.DEFAULT
    implied["class_weight"] = 0.0 if no_head and not class_weight_given else None
    return package, implied, path


class _ProgressPrinter:
    """Turns training events into a rich progress bar and one line per epoch."""

    def __init__(self, console, prefix: str = ""):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = console
        self.prefix = prefix
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = None
        self.epochs = 0

    def __call__(self, event):
        kind = event["event"]
        prefix = self.prefix + (f"fold {event['fold']}/{event['k']} " if "fold" in event else "")
        if kind == "start":
            self.epochs = event["epochs"]
            self.console.print(
                f"{prefix}training on {event['n_train']} stamps, validating on {event['n_val']}, "
                f"{event['parameters']} parameters, device {event['device']}"
            )
            self.progress.start()
        elif kind == "step":
            if event["step"] == 1:
                if self.task is not None:
                    self.progress.remove_task(self.task)
                self.task = self.progress.add_task(
                    f"{prefix}epoch {event['epoch']}/{self.epochs}", total=event["steps"], loss=event["loss"]
                )
            self.progress.update(self.task, advance=1, loss=event["loss"])
        elif kind == "epoch":
            mark = "*" if event["improved"] else " "
            self.console.print(
                f"{prefix}epoch {event['epoch']}{mark} loss {event['train_loss']:.4f} val {event['val_loss']:.4f} "
                f"AUC {event['val_auc']:.5f} lr {event['lr']:.1e} {event['samples_per_second']:.0f}/s"
            )
        elif kind == "init":
            self.console.print(
                f"{prefix}init package on the validation set: loss {event['val_loss']:.4f} "
                f"AUC {event['val_auc']:.5f} (the bar an epoch must beat)"
            )
        elif kind == "budget":
            self.epochs = event["epochs"]
            self.console.print(
                f"{prefix}time budget: {event['epochs']} epochs of {event['seconds_per_epoch']:.0f} s fit; "
                "the learning-rate schedule is shortened to match"
            )
        elif kind == "calibrate":
            if self.task is not None:
                self.progress.remove_task(self.task)
                self.task = None
            self.progress.stop()
            self.console.print(f"{prefix}calibrating (temperature scaling on the validation set)")
        elif kind == "done":
            self.progress.stop()


def _gallery(plots, test, probs, snr_min):
    """PNG galleries of the worst test examples: bogus scored highest, real scored lowest."""
    import numpy as np

    from ..training.plots import plot_gallery

    paths = []
    mask = np.ones(len(test), bool) if test.snr is None else test.snr >= snr_min
    for label, name, order in ((0, "worst_bogus", -1), (1, "worst_real", 1)):
        idx = np.flatnonzero(mask & (test.labels == label))
        idx = idx[np.argsort(order * probs[idx], kind="stable")][:6]
        titles = [
            f"{test.classes[i] if test.classes is not None else ('real' if label else 'bogus')}\n"
            f"p={probs[i]:.3f}" + (f" snr={test.snr[i]:.1f}" if test.snr is not None else "")
            for i in idx
        ]
        what = "bogus scored highest" if label == 0 else "real scored lowest"
        paths.append(
            plot_gallery(
                test.x[idx], titles, Path(plots) / f"{name}.png", channel_names=test.contract.channels,
                title=f"Test {what}" + (f" (SNR >= {snr_min:g})" if test.snr is not None else ""),
            )
        )  # fmt: skip
    return paths


@click.command("train")
@click.option("--data", "data_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Labelled stamps (.npz with stamps, label[, source_class, snr]); repeatable.")
@click.option("--simulate", "n_simulate", type=click.IntRange(min=50), default=None,
              help="Also simulate N labelled triplets (lsst.meas.rbnet.sim.simulate_stamps).")
@click.option("--sim-seed", type=int, default=1, show_default=True, help="Seed of --simulate.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Model package to write (.safetensors).")
@click.option("--version", "model_version", default="dev", show_default=True,
              help="reliabilityVersion of the package (at most 7 characters).")
@choice_option("--channels", choices=["triplet", "difference"], default="triplet",
               help="Difference, science and template stamps, or the difference only.")
@click.option("--stamp-size", type=int, default=DEFAULT_STAMP_SIZE, show_default=True,
              help="Side of the stamps the model sees (odd, pixels).")
@choice_option("--normalization", choices=NORMALIZATIONS, default="robust_asinh")
@click.option("--architecture", default="triplet_cnn", show_default=True, help="Registered architecture name.")
@click.option("--widths", default=None, help="Convolution widths, comma-separated (e.g. 16,32,64).")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--lr", type=FINITE_FLOAT, default=None,
              help="Peak AdamW learning rate [default: 3e-3; 3e-4 with --init, 3e-3 with --freeze-features].")
@choice_option("--schedule", choices=["cosine", "plateau", "constant"], default="cosine")
@choice_option("--loss", choices=_LOSSES, default="bce")
@click.option("--class-weight", type=FINITE_FLOAT, default=0.2, show_default=True,
              help="Weight of the artifact-class head loss (0: no class head).")
@click.option("--noise-std", type=FINITE_FLOAT, default=0.0, show_default=True, help="Augmentation: added noise.")
@click.option("--mask-fraction", type=FiniteFloatRange(0, 1), default=0.5, show_default=True,
              help="Fraction of stamps whose bad-mask pixels are blanked as the pipeline does (needs masks).")
@click.option("--patience", type=click.IntRange(min=1), default=3, show_default=True, help="Early stopping.")
@click.option("--val-fraction", type=FINITE_FLOAT, default=0.1, show_default=True)
@click.option("--test-fraction", type=FINITE_FLOAT, default=0.1, show_default=True,
              help="Held out from training and calibration for the final CNN-vs-baseline table (0: none).")
@click.option("--kfold", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also run K-fold cross-validation and report mean +/- std (K >= 2).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option("--max-minutes", type=FINITE_FLOAT, default=None, help="Time budget of the training epochs.")
@click.option("--plots", type=click.Path(file_okay=False), default=None, help="Directory for PNG plots.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of splits, weights and augmentation.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Fit and report the logistic-regression baseline.")
@click.option("--symmetric-temperature/--no-symmetric-temperature", default=True, show_default=True,
              help="Also calibrate rotation/flip-averaged scores.")
@click.option("--init", "init", type=click.Path(dir_okay=False), default=None,
              help="Fine-tune: start from this trained model package ('default': the shipped model). "
                   "Stamp size, channels, normalization and architecture come from it.")
@click.option("--freeze-features", is_flag=True, default=False,
              help="With --init: keep the package's convolutional features fixed and train only the head.")
@click.pass_context
def train(ctx, data_files, n_simulate, sim_seed, out, model_version, channels, stamp_size, normalization,
          architecture, widths, epochs, batch_size, lr, schedule, loss, class_weight, noise_std, mask_fraction, patience,
          val_fraction, test_fraction, kfold, device, threads, max_minutes, plots, seed, baseline,
          symmetric_temperature, init, freeze_features):  # fmt: skip
    """Train a triplet real/bogus model and write its package to OUT."""
    from rich.console import Console

    console = Console(stderr=False)
    if not data_files and not n_simulate:
        raise click.UsageError("give --data or --simulate (or both) for the labelled stamps.")
    if kfold == 1:
        raise click.BadParameter("must be 0 (none) or >= 2.", param_hint="--kfold")
    if not 0 <= test_fraction < 1:
        raise click.BadParameter("must be in [0, 1).", param_hint="--test-fraction")
    out = Path(out)
    if not out.parent.is_dir():
        raise click.BadParameter(f"directory {str(out.parent)!r} does not exist.", param_hint="--out")

    import torch

    # The training package imports torch (and its plots matplotlib): here, so that
    # `rbnet train --help` stays light.
    from ..training.baseline import LogisticBaseline
    from ..training.calibration import apply_temperature
    from ..training.crossval import cross_validate
    from ..training.data import stratified_split
    from ..training.loop import TrainConfig, model_logits, train_triplet_model
    from ..training.report import class_table, evaluate_scores, metrics_table

    init_package = None
    if init is not None:
        init_package, init_defaults, init_path = _init_options(ctx, init, kfold)
        channels, stamp_size = init_defaults["channels"], init_defaults["stamp_size"]
        normalization = init_defaults["normalization"]
        architecture, widths = init_defaults["architecture"], init_defaults["widths"]
        if lr is None:
            lr = init_defaults["lr"]
        if init_defaults["class_weight"] is not None:
            class_weight = init_defaults["class_weight"]
    elif freeze_features:
        raise click.UsageError("--freeze-features needs --init (the package whose features to keep).")
    if lr is None:
        lr = 3e-3
    try:
        contract = InputContract(
            stamp_size=stamp_size,
            channels=CHANNEL_ORDER if channels == "triplet" else DIFFERENCE_ONLY,
            normalization=normalization,
        )
        if init_package is not None:
            contract = init_package.contract  # with its softening and fill value
        hyper = {}
        if widths:
            try:
                hyper["widths"] = [int(w) for w in widths.split(",")]
            except ValueError:
                raise click.BadParameter(
                    f"expected comma-separated integers (e.g. 16,32,64), got {widths!r}.", param_hint="--widths"
                ) from None
            if not all(w >= 1 for w in hyper["widths"]):
                raise click.BadParameter(f"widths must be >= 1, got {widths!r}.", param_hint="--widths")
        config = TrainConfig(
            contract=contract,
            architecture=architecture,
            hyperparameters=hyper,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=lr,
            schedule=schedule,
            loss=loss,
            class_loss_weight=class_weight,
            noise_std=noise_std,
            mask_fraction=mask_fraction,
            patience=patience,
            validation_fraction=val_fraction,
            seed=seed,
            device=device,
            num_threads=threads,
            max_seconds=None if max_minutes is None else 60 * max_minutes,
            version=model_version,
            symmetric_temperature=symmetric_temperature,
            freeze_features=freeze_features,
        )
        if init_package is not None:
            from ..training.loop import check_init_compatible

            check_init_compatible(init_package, config, _init_label(init, init_package))
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    if threads is not None:
        torch.set_num_threads(threads)

    data, sources = _load_data(data_files, n_simulate, sim_seed, contract, mask_fraction, seed, console)
    if len(data) > _FLOAT16_ABOVE:
        config = dataclasses.replace(config, storage_dtype="float16")
    if test_fraction > 0:
        try:
            trainval_idx, test_idx = stratified_split(data.labels, test_fraction, seed + _TEST_SEED_OFFSET, data.classes)
        except ValueError as err:
            raise click.ClickException(f"--test-fraction: {err}") from None
        test = data.subset(test_idx)
        data = data.subset(trainval_idx)
    else:
        test = None

    command = _command_line(ctx)
    results = {"command": command, "sources": sources}
    if kfold:
        console.rule(f"{kfold}-fold cross-validation")
        cv = cross_validate(data, k=kfold, config=config, progress=_ProgressPrinter(console))
        results["crossval"] = cv
        from rich.table import Table

        tab = Table(title=f"{kfold}-fold cross-validation (mean +/- std over folds)")
        tab.add_column("metric")
        tab.add_column("mean +/- std", justify="right")
        for key in ("roc_auc", "accuracy", "ece", "completeness_at_purity.0.99", "completeness_at_purity_snr.0.99"):
            if key in cv["summary"]:
                s = cv["summary"][key]
                tab.add_row(key, f"{s['mean']:.4f} +/- {s['std']:.4f}")
        console.print(tab)

    console.rule("training")
    provenance = {"command": command, "data": sources, "seed": seed}
    try:
        result = train_triplet_model(
            data, config=config, progress=_ProgressPrinter(console), provenance=provenance,
            init=None if init_package is None else init_path,  # the file, so provenance can name it
        )  # fmt: skip
    except (ValueError, FloatingPointError) as err:
        raise click.ClickException(str(err)) from None
    package = result.package
    results["validation"] = result.metrics
    thresholds = {t["name"]: t["threshold"] for t in package.thresholds}

    columns = {}
    eval_set = test
    if eval_set is None:
        console.print("no test split (--test-fraction 0): the table below is on the validation set")
    else:
        model = package.build("classifier")
        logits = model_logits(model, eval_set.x, batch_size=config.eval_batch_size)
        p_cnn = apply_temperature(logits, package.temperature)
        columns["CNN"] = evaluate_scores(
            p_cnn, eval_set.labels, classes=eval_set.classes, snr=eval_set.snr, thresholds=thresholds
        )
        if init_package is not None:
            # The starting point on the same test split: what fine-tuning bought.
            p_init = apply_temperature(
                model_logits(init_package.build("classifier"), eval_set.x, batch_size=config.eval_batch_size),
                init_package.temperature,
            )
            columns["init package"] = evaluate_scores(
                p_init, eval_set.labels, classes=eval_set.classes, snr=eval_set.snr,
                thresholds={t["name"]: t["threshold"] for t in init_package.thresholds},
            )  # fmt: skip
    if baseline:
        console.print("fitting the logistic-regression baseline")
        base = LogisticBaseline(seed=seed).fit(data.x, data.labels)
        if eval_set is not None:
            p_base = base.predict_proba(eval_set.x)
            # The baseline is reported at 0.5 and by the threshold-free metrics: purity thresholds
            # of its own would have to be chosen on the test set.
            columns["baseline"] = evaluate_scores(
                p_base, eval_set.labels, classes=eval_set.classes, snr=eval_set.snr
            )
    if eval_set is None:
        columns = {"CNN (validation)": result.metrics}
    results["test"] = None if eval_set is None else {name.lower(): m for name, m in columns.items()}

    package.metrics = json.loads(
        json.dumps({"validation": result.metrics, "test": (results["test"] or {}).get("cnn")}, default=float)
    )
    package.save(out)
    metrics_path = out.with_suffix(".metrics.json")
    summary = {
        "version": package.version,
        "temperature": package.temperature,
        "temperature_symmetric": package.temperature_symmetric,
        "thresholds": package.thresholds,
        "history": result.history,
        "best_epoch": result.best_epoch,
        **results,
    }
    write_atomic(metrics_path, json.dumps(summary, indent=1, default=float) + "\n")

    console.print(metrics_table(columns, title="Test set" if eval_set is not None else "Validation set"))
    if any("per_class" in m for m in columns.values()):
        console.print(class_table(columns))
    if plots:
        from ..training.plots import make_evaluation_plots

        if eval_set is not None:
            probs = {"CNN": p_cnn}
            if baseline:
                probs["baseline"] = p_base
            paths = make_evaluation_plots(
                plots, probs, eval_set.labels, classes=eval_set.classes, snr=eval_set.snr,
                threshold=thresholds.get("default", 0.5), history=result.history,
            )  # fmt: skip
            paths += _gallery(plots, eval_set, p_cnn, config.threshold_snr_min or 0.0)
        else:
            v = result.validation
            paths = make_evaluation_plots(
                plots, {"CNN": v.probabilities}, v.labels, classes=v.classes, snr=v.snr, history=result.history
            )
        console.print(f"wrote {len(paths)} plots to {plots}")
    auc = columns[next(iter(columns))]["roc_auc"]
    console.print(
        f"wrote {out} (version {package.version!r}, T = {package.temperature:.3f}, AUC {auc:.5f}) and {metrics_path.name}"
    )
