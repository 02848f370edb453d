#!/usr/bin/env python
"""Real-data benchmark: models scored on the real alert cutouts of ``../shared/realdata``.

The development set has no human labels: each alert carries its survey's own
score (ZTF ``drb`` from braai and the older ``rb``, Rubin's ``reliability``),
and some a context (``cls``: spectroscopically classified transients, known
asteroids). This script scores every cutout with `lsst.meas.rbnet.score_triplets`
at the survey's own cutout size (the model's contract crops or pads) and reports,
per survey and per model, in the same run:

- ROC-AUC of our score against each survey score >= 0.5, and agreement at 0.5;
- Spearman rank correlation with the survey score;
- the fraction kept (score >= 0.5) of confirmed transients and known asteroids;
- score histograms, and a PNG of the worst disagreements per survey.

Never train or tune thresholds on these cutouts (see the data's README).

Usage::

    python benchmarks/bench_real.py                       # old default (from git) vs current default
    python benchmarks/bench_real.py --model mine=path.safetensors --old-rev none

Writes ``benchmarks/results/real.{md,json}`` and PNGs in ``benchmarks/results/real/``.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = ROOT.parent / "shared" / "realdata"
#: The commit whose shipped default model is the "old" model: sim2.1, the default before
#: sim2.3 (sim2.0 is at 59bd01b, sim1.1, the default before issue 8, at c8e9966:
#: ``--old-rev c8e9966``).
OLD_REV = "e9d4c36"
PACKAGE_PATH = "python/lsst/meas/rbnet/data/rbnet-default.safetensors"


def _spearman(a, b):
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok]).statistic) if ok.sum() > 2 else float("nan")


def _auc(scores, labels):
    from lsst.meas.rbnet.training.metrics import roc_auc

    ok = np.isfinite(scores)
    y = labels[ok]
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc(scores[ok], y))


def load_realdata(data_dir):
    """Every alert of the development set, grouped by survey: dict survey -> dict of arrays."""
    groups = {
        "ztf": ["ztf_alerts_63.npz"],
        "ztf_edge": ["ztf_alerts_edge.npz"],
        "rubin": ["rubin_alerts_30.npz"],
        "rubin_large": ["rubin_alerts_large.npz"],
        "pgir": ["pgir_alerts_61.npz"],
        "winter": ["winter_alerts_81.npz"],
        "decam": ["decam_alerts_63.npz"],
    }
    out = {}
    for survey, names in groups.items():
        parts = []
        for name in names:
            path = pathlib.Path(data_dir) / name
            if not path.exists():
                continue
            d = np.load(path, allow_pickle=False)
            parts.append({k: d[k] for k in d.files} | {"file": np.full(len(d["triplets"]), name)})
        if parts:
            out[survey] = parts
    return out


def score_parts(parts, model):
    """Scores and flags of every alert of one survey; files of different stamp sizes scored apart."""
    from lsst.meas.rbnet import score_triplets

    scores, flags = [], []
    for part in parts:
        t = part["triplets"].astype(np.float32)
        s, f = score_triplets(t[:, 0], t[:, 1], t[:, 2], model=model, return_flags=True)
        scores.append(s)
        flags.append(f)
    return np.concatenate(scores), np.concatenate(flags)


def _concat(parts, key):
    return np.concatenate([p[key] for p in parts])


def survey_metrics(survey, parts, scores, flags):
    """Figures of one survey against its own scores and context."""
    res = {"n": int(len(scores)), "n_flagged": int((flags != 0).sum()), "n_nan": int(np.isnan(scores).sum())}
    cls = _concat(parts, "cls").astype(str)
    references = {"score": _concat(parts, "score").astype(float)}
    if survey.startswith("ztf"):
        references["rb"] = _concat(parts, "rb").astype(float)
        references["drb"] = _concat(parts, "drb").astype(float)
    for name, ref in references.items():
        ok = np.isfinite(ref)
        if ok.sum() < 2:
            continue
        label = (ref[ok] >= 0.5).astype(int)
        s = scores[ok]
        res[f"vs_{name}"] = {
            "n": int(ok.sum()),
            "n_below_0.5": int((label == 0).sum()),
            "roc_auc": _auc(s, label),
            "agreement_0.5": float(np.mean((np.nan_to_num(s, nan=0.0) >= 0.5) == label)),
            "spearman": _spearman(s, ref[ok]),
        }
    transient = np.array(["tns" in c for c in cls])
    asteroid = np.array(["known_SSO" in c or "roid:3" in c for c in cls])
    for name, sel in (("confirmed_transients", transient), ("known_asteroids", asteroid)):
        if sel.any():
            res[name] = {"n": int(sel.sum()), "kept_0.5": float(np.mean(np.nan_to_num(scores[sel]) >= 0.5))}
    if (transient | asteroid).any():
        sel = transient | asteroid
        res["confirmed_transients_and_asteroids"] = {
            "n": int(sel.sum()),
            "kept_0.5": float(np.mean(np.nan_to_num(scores[sel]) >= 0.5)),
        }
    if survey.startswith("ztf"):
        neg = _concat(parts, "isdiffpos").astype(str) == "f"
        ref = references["score"]
        for name, sel in (("positive", ~neg), ("negative", neg)):
            ok = sel & np.isfinite(ref)
            if ok.any():
                res[f"{name}_detections"] = {
                    "n": int(ok.sum()),
                    "agreement_0.5": float(np.mean((np.nan_to_num(scores[ok]) >= 0.5) == (ref[ok] >= 0.5))),
                    "mean_score_survey_real": float(np.nanmean(scores[ok & (ref >= 0.5)])),
                }
    return res


def plot_histograms(path, survey, parts, all_scores):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = _concat(parts, "score").astype(float)
    fig, axes = plt.subplots(1, len(all_scores), figsize=(4.5 * len(all_scores), 3.4), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for ax, (name, scores) in zip(axes[0], all_scores.items()):
        real = np.isfinite(ref) & (ref >= 0.5)
        bogus = np.isfinite(ref) & (ref < 0.5)
        ax.hist(scores[real], bins=bins, alpha=0.6, label="survey score >= 0.5")
        ax.hist(scores[bogus], bins=bins, alpha=0.6, label="survey score < 0.5")
        ax.set_xlabel(f"reliability ({name})")
        ax.set_ylabel("alerts")
        ax.set_title(f"{survey}: {name}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_worst(path, survey, parts, scores, model_name, n=8):
    """The alerts where our score and the survey's differ most, both ways."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = _concat(parts, "score").astype(float)
    trip = [p["triplets"] for p in parts]
    size = max(t.shape[-1] for t in trip)
    stack = np.full((sum(len(t) for t in trip), 3, size, size), np.nan, np.float32)
    i = 0
    for t in trip:
        stack[i : i + len(t), :, : t.shape[-2], : t.shape[-1]] = t
        i += len(t)
    cls = _concat(parts, "cls").astype(str)
    gap = np.where(np.isfinite(ref), np.nan_to_num(scores, nan=0.5) - ref, 0.0)
    picks = list(np.argsort(gap)[: n // 2]) + list(np.argsort(-gap)[: n // 2])
    picks = [p for p in picks if np.isfinite(ref[p])]
    if not picks:
        return
    fig, axes = plt.subplots(len(picks), 3, figsize=(6.6, 2.2 * len(picks)), squeeze=False)
    cmap = plt.get_cmap("gray").copy()
    cmap.set_bad("red")
    for row, k in enumerate(picks):
        for col, name in enumerate(("science", "template", "difference")):
            img = stack[k, col]
            finite = img[np.isfinite(img)]
            lo, hi = (np.percentile(finite, [1, 99.5]) if finite.size else (0, 1))
            ax = axes[row, col]
            ax.imshow(np.ma.masked_invalid(img), cmap=cmap, vmin=lo, vmax=hi, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=8)
            if col == 0:
                ax.set_ylabel(f"ours {scores[k]:.2f}\nsurvey {ref[k]:.2f}", fontsize=7)
        axes[row, 2].text(1.02, 0.5, cls[k][:40], transform=axes[row, 2].transAxes, fontsize=6, va="center")
    fig.suptitle(f"{survey}: worst disagreements of {model_name} (red: NaN)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig, path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def _old_model(rev, tmpdir):
    data = subprocess.run(["git", "show", f"{rev}:{PACKAGE_PATH}"], cwd=ROOT, capture_output=True, check=True).stdout
    path = pathlib.Path(tmpdir) / f"default-{rev}.safetensors"
    path.write_bytes(data)
    return path


def _fmt(x):
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.3f}"


def write_markdown(path, results, command, models):
    lines = [
        "# Real alert cutouts: our models against the surveys' own scores",
        "",
        f"Command: `{command}`",
        "",
        "Data: `../shared/realdata` (no human labels; survey scores are other classifiers' opinions).",
        "Models: " + ", ".join(f"`{k}` ({v})" for k, v in models.items()) + ".",
        "",
    ]
    for survey in results[next(iter(results))]:
        lines += [f"## {survey}", ""]
        rows = [("alerts", lambda r: str(r["n"])), ("flagged", lambda r: str(r["n_flagged"]))]
        first = results[next(iter(results))][survey]
        for ref in ("vs_rb", "vs_drb", "vs_score"):
            if ref in first:
                label = ref[3:]
                rows += [
                    (f"ROC-AUC vs {label} >= 0.5 (n={first[ref]['n']}, {first[ref]['n_below_0.5']} below)",
                     lambda r, ref=ref: _fmt(r.get(ref, {}).get("roc_auc"))),
                    (f"agreement at 0.5 with {label}", lambda r, ref=ref: _fmt(r.get(ref, {}).get("agreement_0.5"))),
                    (f"Spearman with {label}", lambda r, ref=ref: _fmt(r.get(ref, {}).get("spearman"))),
                ]
        for key in ("confirmed_transients", "known_asteroids", "confirmed_transients_and_asteroids"):
            if key in first:
                rows.append((f"{key.replace('_', ' ')} kept at 0.5 (n={first[key]['n']})",
                             lambda r, key=key: _fmt(r.get(key, {}).get("kept_0.5"))))
        for key in ("positive_detections", "negative_detections"):
            if key in first:
                rows.append((f"{key.replace('_', ' ')}: agreement at 0.5 (n={first[key]['n']})",
                             lambda r, key=key: _fmt(r.get(key, {}).get("agreement_0.5"))))
        lines.append("| | " + " | ".join(results) + " |")
        lines.append("|---|" + "---:|" * len(results))
        for label, get in rows:
            lines.append(f"| {label} | " + " | ".join(get(results[m][survey]) for m in results) + " |")
        lines += ["", f"![{survey} histograms](real/{survey}_hist.png)",
                  f"![{survey} worst](real/{survey}_worst.png)", ""]
    tmp = pathlib.Path(str(path) + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="The realdata folder.")
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH of a model package (repeatable).")
    parser.add_argument("--old-rev", default=OLD_REV, help="Git revision of the old default model ('none' to skip).")
    parser.add_argument("--no-current", action="store_true", help="Do not score with the current default model.")
    parser.add_argument("--out", default=str(HERE / "results" / "real"), help="Results stem (.md/.json).")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from lsst.meas.rbnet.package import ModelPackage
    from lsst.meas.rbnet.scoring import load_scorer

    if not pathlib.Path(args.data).is_dir():
        sys.exit(f"bench_real: no realdata folder at {args.data}")
    data = load_realdata(args.data)
    with tempfile.TemporaryDirectory() as tmpdir:
        models = {}
        if args.old_rev.lower() != "none":
            models[f"old ({args.old_rev})"] = str(_old_model(args.old_rev, tmpdir))
        if not args.no_current:
            models["current default"] = None
        for spec in args.model:
            name, _, path = spec.partition("=")
            models[name] = path
        versions, results, scores_by = {}, {}, {}
        for name, path in models.items():
            # One scorer per model (the process-wide cache); every survey is scored with its package.
            pkg = load_scorer(ModelPackage.load(path) if path else None).package
            versions[name] = pkg.version
            results[name] = {}
            t0 = time.perf_counter()
            for survey, parts in data.items():
                s, f = score_parts(parts, pkg)
                scores_by.setdefault(survey, {})[name] = s
                results[name][survey] = survey_metrics(survey, parts, s, f)
            print(f"{name}: scored in {time.perf_counter() - t0:.1f} s")
    out = pathlib.Path(args.out)
    figdir = out.parent / out.name
    last = list(models)[-1]
    for survey, parts in data.items():
        plot_histograms(figdir / f"{survey}_hist.png", survey, parts, scores_by[survey])
        plot_worst(figdir / f"{survey}_worst.png", survey, parts, scores_by[survey][last], last)
    command = "python benchmarks/bench_real.py " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"command": command.strip(), "models": {k: versions[k] for k in models}, "results": results}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, out.with_suffix(".json"))
    write_markdown(out.with_suffix(".md"), results, command.strip(), versions)
    for name in models:
        z = results[name].get("ztf", {})
        r = results[name].get("rubin", {})
        print(
            f"{name:>20}: ZTF AUC vs rb {_fmt(z.get('vs_rb', {}).get('roc_auc'))}"
            f" vs drb {_fmt(z.get('vs_drb', {}).get('roc_auc'))}"
            f" agree(score) {_fmt(z.get('vs_score', {}).get('agreement_0.5'))}"
            f" kept(tns+sso) {_fmt(z.get('confirmed_transients_and_asteroids', {}).get('kept_0.5'))}"
            f" | Rubin agree {_fmt(r.get('vs_score', {}).get('agreement_0.5'))}"
            f" spearman {_fmt(r.get('vs_score', {}).get('spearman'))}"
        )


if __name__ == "__main__":
    main()
