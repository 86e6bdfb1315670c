"""Collecting `results.json` files into one comparison table.

The figures printed are read straight from each run's results file, so the table and
the files cannot disagree; only the intervals over users and the paired differences to BT
are computed here, from the per-user sums each file stores (a bootstrap with a fixed seed,
so a report is reproducible).
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np

from rich.console import Console
from rich.table import Table

from pluralign.evaluate.metrics import bootstrap_ratio_interval
from pluralign.evaluate.sample_size import MIN_USERS_FOR_INTERVAL, too_few_for_interval
from pluralign.jsonio import flatten
from pluralign.plotting import pyplot

TABLE_SHOTS = (1, 5, 20)


def collect_results(root: str | pathlib.Path) -> list[dict]:
    """Every complete results.json under root (a run or a multirun directory), sorted by path."""
    out = []
    for path in sorted(pathlib.Path(root).rglob("results.json")):
        results = json.loads(path.read_text())
        if results.get("status") == "complete":
            out.append({**results, "path": str(path)})
    return out


def _fmt(x, std=None) -> str:
    if x is None:
        return "—"
    return f"{x:.3f}" if std is None else f"{x:.3f} ± {std:.3f}"


def _fmt_unseen(x, std, n_users) -> str:
    """An unseen-user figure: with its ±, or, on too few users for any spread to mean much,
    with the number of users instead."""
    if x is not None and too_few_for_interval(n_users):
        return f"{x:.3f} ({n_users} users)"
    return _fmt(x, std)


def run_variants(results: list[dict]) -> list[str]:
    """Per run, the config values in which it differs from the other runs of its model and
    dataset (swept keys, seeds included), e.g. "train.learning_rate=0.01"; "" where none."""
    flats = [
        {k: json.dumps(v, sort_keys=True) for k, v in flatten(r.get("config", {})).items() if k not in _NOT_A_RUN_KEY}
        for r in results
    ]
    labels = []
    for r, f in zip(results, flats):
        peers = [g for q, g in zip(results, flats) if (q["model"], q["dataset"]) == (r["model"], r["dataset"])]
        differing = sorted(k for k in {k for g in peers for k in g} if len({g.get(k) for g in peers}) > 1)
        labels.append("\n".join(f"{k.removeprefix('model.')}={_short(json.loads(f[k])) if k in f else None}" for k in differing))
    return labels


def _short(value) -> str:
    """A config value for a table cell: floats rounded to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return str(value)


def results_table(results: list[dict], shots=TABLE_SHOTS) -> Table:
    table = Table(
        title="pluralign results: accuracy, mean ± std (seen: over seeds; unseen: over seed×draw episodes; none for one) (unseen users: random support/query)",
        caption="Bayes-opt: accuracy of the true model; best non-personal: the best predictor that ignores who the user is (synthetic data)",
    )
    variants = run_variants(results)
    with_variant = any(variants)
    columns = ("model", "dataset", *(["variant"] if with_variant else []), "seeds", "seen acc",
               *(f"unseen k={k}" for k in shots), "Bayes-opt", "best non-personal", "wall s")
    for column in columns:
        if column == "variant":  # one key=value per line, never cut short
            table.add_column(column, overflow="fold", min_width=min(40, max(len(p) for v in variants for p in v.split())))
        else:
            table.add_column(column, justify="left" if column in ("model", "dataset") else "right")
    for r, variant in zip(results, variants):
        at_k = r["unseen"]["accuracy_at_k"]
        std_k = r["unseen"].get("accuracy_std_at_k", {})
        mode = r["unseen"].get("mode", "random")
        table.add_row(
            r["model"], r["dataset"], *([variant] if with_variant else []), str(len(r["seeds"])),
            _fmt(r["seen"]["accuracy"], r["seen"].get("accuracy_std")),
            *(_fmt_unseen(at_k.get(str(k)), std_k.get(str(k)), _unseen(r, mode, k).get("n_users")) for k in shots),
            _fmt(r.get("bayes_optimal_accuracy")), _fmt(r.get("population_optimal_accuracy")),
            f"{r['wall_seconds']:.0f}",
        )
    return table


def print_results(root: str | pathlib.Path, console: Console | None = None) -> list[dict]:
    results = collect_results(root)
    # Wide enough for the table even when stdout is a pipe or a CI log (rich would assume 80).
    console = console or Console(width=max(Console().width, 200))
    if not results:
        console.print(f"no complete results.json under {root}")
    else:
        console.print(results_table(results))
        for line in run_warnings(results):
            console.print(f"[bold yellow]warning[/] {line}", highlight=False)
    missing = incomplete_runs(root, results)
    if missing:
        console.print(f"[bold red]incomplete jobs[/] (no complete results.json; re-run the sweep to finish them): {len(missing)}")
        for job in missing:
            console.print(f"  {job}", markup=False, highlight=False)
    return results


# ------------------------------------------------------------------ sweep report: files
#
# `pluralign report SWEEP_DIR` writes, under SWEEP_DIR/report/ (or --out):
#   results.md / results.csv   one row per model × dataset (× swept hyper-parameters), mean ± std over seeds
#   kshot_<mode>.png           unseen-user accuracy against k, random and item_disjoint modes
#   per_user_accuracy.png      cumulative distribution of seen users' per-user accuracy
#   training_curves.png        validation / training loss against steps, from each run's metrics.jsonl
# A group of runs that differ only in their seeds is one row. A group of one run shows that
# run's own numbers (its mean and std over the seeds it trained); a group of several runs
# shows the mean and std (ddof 0) of their values. Nothing else is recomputed.

# Config keys that do not make a run a different experiment.
_NOT_A_VARIANT = {"seeds", "cache_dir", "train.progress"}
_NOT_A_RUN_KEY = {"cache_dir", "train.progress"}  # the console table has one row per run: seeds do count
MODES = ("random", "item_disjoint")


def run_warnings(results: list[dict]) -> list[str]:
    """`<run>: <warning>` for every warning a run recorded in its results.json (`warnings`: a
    small user split, `pluralign.evaluate.sample_size`), once per distinct warning and run group."""
    lines = []
    for r in results:
        for warning in r.get("warnings", []):
            line = f"{r['model']} on {r['dataset']}: {warning}"
            if line not in lines:
                lines.append(line)
    return lines


def group_runs(results: list[dict]) -> list[dict]:
    """Groups runs by (model, dataset, the hyper-parameters in which they differ).

    Returns [{"model", "dataset", "variant" (e.g. "train.learning_rate=0.01", "" when there is
    one), "runs": [results...]}], sorted by model, dataset, variant.
    """
    by_pair: dict[tuple, list[dict]] = {}
    for r in results:
        by_pair.setdefault((r["model"], r["dataset"]), []).append(r)
    groups = []
    for (model, dataset), runs in sorted(by_pair.items()):
        flats = [
            {k: json.dumps(v, sort_keys=True) for k, v in flatten(r.get("config", {})).items() if k not in _NOT_A_VARIANT}
            for r in runs
        ]
        keys = sorted({k for f in flats for k in f})
        differing = [k for k in keys if len({f.get(k) for f in flats}) > 1]
        variants: dict[str, list[dict]] = {}
        for r, f in zip(runs, flats):
            label = ",".join(f"{k}={json.loads(f[k]) if k in f else None}" for k in differing)
            variants.setdefault(label, []).append(r)
        for label, members in sorted(variants.items()):
            groups.append({"model": model, "dataset": dataset, "variant": label, "runs": members})
    return groups


def _combine(values: list, stds: list) -> tuple[float | None, float | None]:
    """One run: its value and its own std over seeds. Several: mean and std of their values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    if len(values) == 1:
        return float(values[0]), (None if stds[0] is None else float(stds[0]))
    return float(np.mean(values)), float(np.std(values))


def _unseen(r: dict, mode: str, k) -> dict:
    return r.get("unseen", {}).get("by_mode", {}).get(mode, {}).get(str(k), {})


def shots_of(groups: list[dict], mode: str) -> list[int]:
    return sorted({int(k) for g in groups for r in g["runs"] for k in r.get("unseen", {}).get("by_mode", {}).get(mode, {})})


def summarize(groups: list[dict]) -> list[dict]:
    """One flat row per group: every metric as `name` (mean) and `name_std`."""
    rows = []
    shots = {mode: shots_of(groups, mode) for mode in MODES}
    for g in groups:
        runs = g["runs"]
        row = {
            "model": g["model"], "dataset": g["dataset"], "variant": g["variant"], "runs": len(runs),
            "seeds": sum(len(r["seeds"]) for r in runs),
        }

        def put(name, values, stds=None):
            row[name], row[f"{name}_std"] = _combine(values, stds or [None] * len(values))

        put("seen_accuracy", [r["seen"]["accuracy"] for r in runs], [r["seen"].get("accuracy_std") for r in runs])
        for metric in ("log_loss", "ece", "per_user_p10", "worst_group_accuracy"):
            put(f"seen_{metric}", [r["seen"].get(metric) for r in runs])
        if len(runs) == 1 and len(runs[0]["seeds"]) == 1:  # one seed: no spread to show
            row["seen_accuracy_std"] = None
        for mode in MODES:
            for k in shots[mode]:
                put(
                    f"unseen_{mode}_k{k}",
                    [_unseen(r, mode, k).get("accuracy") for r in runs],
                    [_unseen(r, mode, k).get("accuracy_std") for r in runs],
                )
                row.update(unseen_counts(g, mode, k, bt_groups(groups, g)))
        put("bayes_optimal_accuracy", [r.get("bayes_optimal_accuracy") for r in runs])
        put("population_optimal_accuracy", [r.get("population_optimal_accuracy") for r in runs])
        put("wall_seconds", [r.get("wall_seconds") for r in runs])
        rows.append(row)
    return rows


def unseen_counts(group: dict, mode: str, k: int, bt: list[dict]) -> dict:
    """A (mode, k) cell's counts and intervals for a report row, under `unseen_{mode}_k{k}_`:
    std_over (what the ± is over), n_users / n_query_pairs (scored per episode), ci_low/high
    (bootstrap over users of the pooled accuracy, the runs' per-user sums added up), vs_bt and
    vs_bt_low/high (paired difference to BT on the same users and queries), reason (why there
    is no figure), largest_available."""
    name = f"unseen_{mode}_k{k}"
    entries = [_unseen(r, mode, k) for r in group["runs"]]
    measured = [e for e in entries if e.get("accuracy") is not None]
    if not measured:
        reasons = [e["reason"] for e in entries if e.get("reason")]
        return {f"{name}_reason": reasons[0] if reasons else f"k={k}: not measured in this run"}
    episodes = sum(e.get("n_episodes", 1) for e in measured)
    out = {
        f"{name}_std_over": f"{len(measured)} runs" if len(measured) > 1 else f"{episodes} seed×draw episodes",
        f"{name}_n_users": measured[0].get("n_users"),
        f"{name}_n_query_pairs": measured[0].get("n_query_pairs"),
    }
    if any(e.get("largest_available") for e in measured):
        out[f"{name}_largest_available"] = True
    pooled = pooled_per_user(measured)
    if pooled is None:
        return out
    few = too_few_for_interval(len(pooled["user"]))
    if few:  # the point figures stay; no interval over so few users
        out[f"{name}_no_interval"] = few
    else:
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = bootstrap_ratio_interval(pooled["correct"], pooled["n"])
    for candidate in bt:  # the BT runs that scored the same users on the same queries (same episodes)
        bt_entries = [_unseen(r, mode, k) for r in candidate["runs"]]
        if candidate is group or sorted(e.get("episodes", "") for e in bt_entries) != sorted(e["episodes"] for e in measured):
            continue
        base = pooled_per_user(bt_entries)
        if base is not None and np.array_equal(base["user"], pooled["user"]) and np.allclose(base["n"], pooled["n"]):
            gain = pooled["correct"] - base["correct"]
            out[f"{name}_vs_bt"] = float(gain.sum() / max(pooled["n"].sum(), 1e-12))
            if not few:
                out[f"{name}_vs_bt_low"], out[f"{name}_vs_bt_high"] = bootstrap_ratio_interval(gain, pooled["n"])
            break
    return out


def pooled_per_user(entries: list[dict]) -> dict | None:
    """The per-user sums of several runs' entries added up by user id (arrays sorted by user);
    None if a run stored none (results written before they were)."""
    if not entries or any("per_user" not in e or "episodes" not in e for e in entries):
        return None
    users = np.unique(np.concatenate([np.asarray(e["per_user"]["user"], np.int64) for e in entries]))
    out = {"user": users, **{key: np.zeros(len(users)) for key in ("n", "correct", "weight", "log_loss_sum")}}
    for e in entries:
        at = np.searchsorted(users, np.asarray(e["per_user"]["user"], np.int64))
        for key in ("n", "correct", "weight", "log_loss_sum"):
            np.add.at(out[key], at, np.asarray(e["per_user"][key], np.float64))
    return out


def bt_groups(groups: list[dict], group: dict) -> list[dict]:
    """The BT groups a group may be compared with: BT on the same dataset (any variant)."""
    return [g for g in groups if g["model"] == "bt" and g["dataset"] == group["dataset"]]


def write_csv(rows: list[dict], path: pathlib.Path) -> None:
    """Full precision (repr of the floats read from results.json, or of their mean/std)."""
    import csv

    columns = list(dict.fromkeys(c for row in rows for c in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})


def measured_shots(rows: list[dict], mode: str) -> list[int]:
    """The ks of a mode with a figure in some row."""
    prefix = f"unseen_{mode}_k"
    return sorted({int(c[len(prefix):]) for row in rows for c in row
                   if c.startswith(prefix) and c[len(prefix):].isdigit() and row[c] is not None})


def _interval(low, high) -> str:
    return "—" if low is None or high is None else f"[{low:.3f}, {high:.3f}]"


def _difference(row: dict, name: str) -> str:
    d = row.get(f"{name}_vs_bt")
    if d is None:
        return "—"
    if row.get(f"{name}_no_interval"):
        return f"{d:+.3f} (no CI: {row.get(f'{name}_n_users')} users)"
    return f"{d:+.3f} {_interval(row.get(f'{name}_vs_bt_low'), row.get(f'{name}_vs_bt_high'))}"


def _counts(row: dict, name: str) -> str:
    n_users = row.get(f"{name}_n_users")
    return "—" if n_users is None else f"{n_users} / {row.get(f'{name}_n_query_pairs')}"


def markdown_table(rows: list[dict], shots=TABLE_SHOTS) -> str:
    all_shots = measured_shots(rows, "random")
    # The table's k (where measured) and always the largest measured k; the CSV and the
    # detailed table have every k.
    shots = sorted({k for k in shots if k in all_shots} | set(all_shots[-1:]))
    disjoint = max(measured_shots(rows, "item_disjoint"), default=None)
    largest = f"unseen_random_k{shots[-1]}" if shots else None
    with_variant = any(row["variant"] for row in rows)
    header = ["model", "dataset", *(["variant"] if with_variant else []), "seeds", "seen acc",
              *(f"unseen k={k}" for k in shots), *([f"item-split k={disjoint}"] if disjoint else []),
              *([f"Δ vs BT k={shots[-1]} [95% CI]", f"users / query pairs k={shots[-1]}"] if largest else []),
              "Bayes-opt", "best non-personal"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cell = lambda name: _fmt(row.get(name), row.get(f"{name}_std"))  # noqa: E731
        ucell = lambda name: _fmt_unseen(row.get(name), row.get(f"{name}_std"), row.get(f"{name}_n_users"))  # noqa: E731
        lines.append("| " + " | ".join([
            row["model"], row["dataset"], *([row["variant"]] if with_variant else []), str(row["seeds"]),
            cell("seen_accuracy"), *(ucell(f"unseen_random_k{k}") for k in shots),
            *([ucell(f"unseen_item_disjoint_k{disjoint}")] if disjoint else []),
            *([_difference(row, largest), _counts(row, largest)] if largest else []),
            _fmt(row.get("bayes_optimal_accuracy")), _fmt(row.get("population_optimal_accuracy")),
        ]) + " |")
    shown = [f"unseen_random_k{k}" for k in shots] + ([f"unseen_item_disjoint_k{disjoint}"] if disjoint else [])
    missing = [f"- {run_label(row)}, {name.removeprefix('unseen_').replace('_k', ' k=')}: {row[f'{name}_reason']}"
               for row in rows for name in shown if row.get(name) is None and row.get(f"{name}_reason")]
    return "\n".join(lines + (["", "Missing figures (—):", *missing] if missing else []))


def unseen_detail_table(rows: list[dict]) -> str:
    """Every (mode, k) of every row: the figure, what its ± is over, the 95% interval over users,
    the paired difference to BT, the counts, or why there is no figure."""
    with_variant = any(row["variant"] for row in rows)
    header = ["model", "dataset", *(["variant"] if with_variant else []), "mode", "k", "accuracy", "± over",
              "95% CI over users", "Δ vs BT [95% CI]", "users / query pairs", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode in MODES:
        prefix = f"unseen_{mode}_k"
        ks = sorted({int(c[len(prefix):].split("_")[0]) for row in rows for c in row if c.startswith(prefix)})
        for row in rows:
            for k in ks:
                name = f"{prefix}{k}"
                if not any(c == name or c.startswith(name + "_") for c in row):
                    continue
                note = row.get(f"{name}_reason") or row.get(f"{name}_no_interval") or (
                    "largest k enough users reach" if row.get(f"{name}_largest_available") else "")
                over = row.get(f"{name}_std_over", "") if row.get(f"{name}_std") is not None else ""
                lines.append("| " + " | ".join([
                    row["model"], row["dataset"], *([row["variant"]] if with_variant else []), mode, str(k),
                    _fmt_unseen(row.get(name), row.get(f"{name}_std"), row.get(f"{name}_n_users")),
                    "" if row.get(f"{name}_no_interval") else over,
                    _interval(row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")), _difference(row, name),
                    _counts(row, name), note,
                ]) + " |")
    return "\n".join(lines)


def latex_table(rows: list[dict], shots=TABLE_SHOTS) -> str:
    """A booktabs table of the main figures (mean ± std), the best of each column within a
    dataset in bold."""
    all_shots = measured_shots(rows, "random")
    shots = sorted({k for k in shots if k in all_shots} | set(all_shots[-1:]))
    disjoint = max(measured_shots(rows, "item_disjoint"), default=None)
    columns = [("seen_accuracy", "seen"), *((f"unseen_random_k{k}", f"$k={k}$") for k in shots),
               *([(f"unseen_item_disjoint_k{disjoint}", f"item-split $k={disjoint}$")] if disjoint else [])]
    best = {}
    for row in rows:
        for name, _ in columns:
            if row.get(name) is not None:
                key = (row["dataset"], name)
                best[key] = max(best.get(key, -np.inf), round(row[name], 3))
    escape = lambda text: str(text).replace("_", r"\_")  # noqa: E731

    def cell(row, name):
        value, std = row.get(name), row.get(f"{name}_std")
        if value is None:
            return "--"
        if too_few_for_interval(row.get(f"{name}_n_users")):  # no spread over so few users
            std = None
        text = f"{value:.3f}" + (f" \\pm {std:.3f}" if std is not None else "")
        return f"$\\mathbf{{{text}}}$" if round(value, 3) == best[(row["dataset"], name)] else f"${text}$"

    lines = [r"\begin{tabular}{ll" + "r" * len(columns) + "}", r"\toprule",
             " & ".join(["model", "dataset", *(label for _, label in columns)]) + r" \\", r"\midrule"]
    for row in rows:
        label = row["model"] + (f" [{row['variant']}]" if row["variant"] else "")
        lines.append(" & ".join([escape(label), escape(row["dataset"]), *(cell(row, name) for name, _ in columns)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"



def run_label(row_or_group: dict, with_model: bool = True) -> str:
    """A run's legend label: ``model [variant]`` (the variant alone with ``with_model=False``), floats rounded."""
    variant = _round_floats(row_or_group["variant"].replace(",", ", "))
    if not with_model:
        return variant or row_or_group["model"]
    return row_or_group["model"] + (f" [{variant}]" if variant else "")


def _round_floats(text: str) -> str:
    """0.30000000000000004 -> 0.3 in a label (4 significant digits)."""
    return re.sub(r"\d+\.\d{5,}(?:e-?\d+)?", lambda m: f"{float(m.group()):.4g}", text)


# ------------------------------------------------------------------ figures
#
# Every figure: a legend outside the axes (never over the curves), labels with rounded
# numbers, colours and markers cycled together (20 distinguishable styles), and a dataset
# split over several panels when it has more curves than one panel holds readably.

MAX_CURVES_PER_PANEL = 6
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def _style(i: int) -> dict:
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    # the colour cycles every 10 curves and the marker shifts by one each cycle: 100 distinct pairs
    return {"color": colors[i % 10], "marker": _MARKERS[(i // 10 + i) % len(_MARKERS)]}


def _panels(rows: list[dict]) -> list[tuple[str, list[int]]]:
    """(title, row indices) per panel: one per dataset; a crowded dataset (more curves than
    `MAX_CURVES_PER_PANEL`) is split into panels of at most that many, each model's variants
    kept together (a model with more variants than that gets its own panel)."""
    panels = []
    for dataset in sorted({r["dataset"] for r in rows}):
        ids = [i for i, r in enumerate(rows) if r["dataset"] == dataset]
        if len(ids) <= MAX_CURVES_PER_PANEL:
            panels.append((dataset, ids))
            continue
        groups, current = [], []
        for model in sorted({rows[i]["model"] for i in ids}):
            variants = [i for i in ids if rows[i]["model"] == model]
            if current and len(current) + len(variants) > MAX_CURVES_PER_PANEL:
                groups.append(current)
                current = []
            current = current + variants
        groups.append(current)
        if len(groups) == 1:
            panels.append((dataset, groups[0]))
        else:
            panels += [(f"{dataset} ({n + 1}/{len(groups)})", group) for n, group in enumerate(groups)]
    return panels


def _figure(items: list[dict], panels: list[tuple[str, list[int]]]):
    """Panels in a grid (one column up to 4 panels, then up to 3 columns, filled row by row),
    with room right of each panel for its legend, where no other panel is. Returns plt, fig and
    per panel (axes, title, item indices, faceted); a faceted panel holds variants of one model
    only, so its labels name the variant alone."""
    plt = pyplot()
    n_cols = 1 if len(panels) <= 4 else min(3, len(panels))
    n_rows = -(-len(panels) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(6.0 + 4.2 * (n_cols - 1), 3.4 * n_rows), squeeze=False,
                             gridspec_kw={"wspace": 1.0 if n_cols > 1 else 0.2, "hspace": 0.45})
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)  # the grid's last row may be short
    return plt, fig, [(ax, title, ids, len({items[i]["model"] for i in ids}) == 1 and len(ids) > 1)
                      for ax, (title, ids) in zip(axes.flat, panels)]


def _legend_outside(ax, n_entries: int) -> None:
    if n_entries:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False,
                  ncols=1 if n_entries <= 14 else 2)


def _save(plt, fig, path: pathlib.Path) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight")  # "tight" keeps the outside legends in the file
    plt.close(fig)


def plot_kshot(rows: list[dict], mode: str, path: pathlib.Path) -> bool:
    """Unseen-user accuracy against k, one panel per dataset (several when crowded, `_panels`),
    one line (± std band) per model and variant."""
    prefix = f"unseen_{mode}_k"
    curves = {
        row_id: sorted((int(c[len(prefix):]), row[c], row.get(f"{c}_std") or 0.0)
                       for c in row if c.startswith(prefix) and c[len(prefix):].isdigit() and row[c] is not None)
        for row_id, row in enumerate(rows)
    }
    if not any(curves.values()):
        return False
    plt, fig, panels = _figure(rows, _panels(rows))
    for ax, title, ids, faceted in panels:
        for n, row_id in enumerate(ids):
            if not curves[row_id]:
                continue
            k, mean, std = (np.array(v) for v in zip(*curves[row_id]))
            (line,) = ax.plot(k, mean, label=run_label(rows[row_id], with_model=not faceted), markersize=4, linewidth=1.3,
                              **_style(n))
            ax.fill_between(k, mean - std, mean + std, color=line.get_color(), alpha=0.12)
        first = rows[ids[0]]
        for value, name, style in ((first.get("bayes_optimal_accuracy"), "Bayes-opt", ":"),
                                   (first.get("population_optimal_accuracy"), "best non-personal", "--")):
            if value is not None:
                ax.axhline(value, color="gray", linestyle=style, linewidth=1, label=f"{name} {value:.3f}")
        ax.set_xscale("log")
        ks = sorted({k for i in ids for k, _, _ in curves[i]})
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("k (support comparisons)")
        ax.set_ylabel(f"unseen-user accuracy ({mode})")
        _legend_outside(ax, len(ids) + 2)
    _save(plt, fig, path)
    return True


def plot_per_user(groups: list[dict], path: pathlib.Path) -> bool:
    """Seen users' per-user accuracy as a cumulative curve (fraction of users at or below each
    accuracy; results.json `seen.per_user_histogram`). With 4–10 held-out pairs per user the
    accuracies take a few values only: a histogram is a comb, the cumulative curve stays
    readable and compares models at a glance (further right = better; the 10th percentile is
    where the curve crosses 0.1)."""
    groups = [g for g in groups if any("per_user_histogram" in r["seen"] for r in g["runs"])]
    if not groups:
        return False
    plt, fig, panels = _figure(groups, _panels(groups))
    for ax, title, ids, faceted in panels:
        for n, i in enumerate(ids):
            hists = [r["seen"]["per_user_histogram"] for r in groups[i]["runs"] if "per_user_histogram" in r["seen"]]
            counts = np.sum([h["counts"] for h in hists], axis=0)
            edges = np.asarray(hists[0]["edges"])
            # A user's accuracy a lies in the bin [edge, edge + 0.05): the curve steps up at the bin's
            # left edge, exact for the common fractions 0, 1/2, 1 of a few held-out pairs.
            cdf = np.cumsum(counts) / max(counts.sum(), 1)
            style = _style(n)
            ax.step(np.concatenate([[0.0], edges[:-1], [1.0]]), np.concatenate([[0.0], cdf, [1.0]]), where="post",
                    color=style["color"], linewidth=1.3)
            ax.plot(edges[:-1][counts > 0], cdf[counts > 0], linestyle="none", markersize=3.5, **style)
            ax.plot([], [], linewidth=1.3, markersize=3.5, **style,  # the legend entry: line and marker
                    label=f"{run_label(groups[i], with_model=not faceted)} (n={int(counts.sum() / len(hists))})")
        ax.axhline(0.1, color="gray", linestyle=":", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("per-user accuracy (seen users, held-out pairs)")
        ax.set_ylabel("fraction of users at or below")
        _legend_outside(ax, len(ids))
    _save(plt, fig, path)
    return True


def read_metrics(run_dir: pathlib.Path) -> list[dict]:
    """The validation records of a run's metrics.jsonl (one line per validation), [] if none."""
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_epoch = {r["epoch"]: r for r in records}  # a resumed run re-logs nothing, but be safe
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_training_curves(groups: list[dict], path: pathlib.Path) -> bool:
    """Training and validation loss against optimiser steps (metrics.jsonl of every run; the
    mean over a run's seeds and over a group's runs), one panel per dataset (several when
    crowded, `_panels`), train dashed, validation solid."""
    curves = {}
    for i, g in enumerate(groups):
        per_run = []
        for r in g["runs"]:
            records = read_metrics(pathlib.Path(r["path"]).parent)
            steps_per_epoch = r.get("train", {}).get("steps_per_epoch", 1)
            if records:
                per_run.append({
                    (rec["epoch"] + 1) * steps_per_epoch: (np.mean(rec.get("train_bce", rec.get("train_loss"))), np.mean(rec["val_loss"]))
                    for rec in records
                })
        if per_run:
            steps = sorted(set.intersection(*(set(c) for c in per_run)))  # runs of a group may stop at different epochs
            curves[i] = [(s, np.mean([c[s][0] for c in per_run]), np.mean([c[s][1] for c in per_run])) for s in steps]
    if not curves:
        return False
    panels = [(title, [i for i in ids if i in curves]) for title, ids in _panels(groups)]
    plt, fig, panels = _figure(groups, [(title, ids) for title, ids in panels if ids])
    for ax, title, ids, faceted in panels:
        for n, i in enumerate(ids):
            steps, train, val = (np.array(v) for v in zip(*curves[i]))
            style = _style(n)
            ax.plot(steps, val, label=run_label(groups[i], with_model=not faceted), markersize=3, linewidth=1.3,
                    markevery=max(1, len(steps) // 8), **style)
            ax.plot(steps, train, color=style["color"], linestyle="--", linewidth=0.9, alpha=0.7)
        ax.plot([], [], color="gray", linestyle="--", label="(dashed: training loss)")
        ax.grid(alpha=0.3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimiser steps")
        ax.set_ylabel("validation loss (seen users)")
        _legend_outside(ax, len(ids) + 1)
    _save(plt, fig, path)
    return True


def incomplete_runs(root: str | pathlib.Path, results: list[dict]) -> list[str]:
    """Job directories of a sweep (they hold .hydra/) without a complete results.json;
    `results` is `collect_results(root)`, so no results file is read twice."""
    complete = {r["path"] for r in results}
    jobs = (hydra_dir.parent for hydra_dir in sorted(pathlib.Path(root).rglob(".hydra")))
    return [str(job) for job in jobs if str(job / "results.json") not in complete]


def write_report(root: str | pathlib.Path, out_dir: str | pathlib.Path | None = None, *, latex: bool = False) -> dict:
    """Writes the tables and figures of every complete results.json under root; returns their paths."""
    results = collect_results(root)
    if not results:
        raise FileNotFoundError(f"no complete results.json under {root}")
    out = pathlib.Path(out_dir) if out_dir is not None else pathlib.Path(root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(results)
    rows = summarize(groups)
    paths = {"csv": out / "results.csv", "markdown": out / "results.md"}
    write_csv(rows, paths["csv"])
    missing = incomplete_runs(root, results)
    md = [f"# pluralign results: {root}", "",
          "Accuracy, mean ± std: seen users over seeds, unseen users over seed×draw episodes (or over runs; see",
          "the detailed table); no ± where there is one seed or one episode. Unseen users: `random` support/query",
          "unless marked item-split. Δ vs BT: paired accuracy difference to BT on the same users and queries, with a",
          "95% bootstrap interval over unseen-test users (1000 resamples); users / query pairs: scored per episode.",
          "Bayes-opt: accuracy of the true model; best non-personal: the best predictor that ignores who the user is (synthetic data).", "",
          markdown_table(rows), "", "## Unseen users, every mode and k", "", unseen_detail_table(rows)]
    warnings = run_warnings(results)
    if warnings:
        md[2:2] = ["**Warnings**", "", *(f"- {w}" for w in warnings),
                   f"- no interval over users is shown for a figure on fewer than {MIN_USERS_FOR_INTERVAL} users", ""]
    if missing:
        md += ["", f"Incomplete runs (no complete results.json; re-run the sweep to finish them): {len(missing)}", ""]
        md += [f"- {m}" for m in missing]
    paths["markdown"].write_text("\n".join(md) + "\n")
    if latex:
        paths["latex"] = out / "results.tex"
        paths["latex"].write_text(latex_table(rows))
    for mode in MODES:
        path = out / f"kshot_{mode}.png"
        if plot_kshot(rows, mode, path):
            paths[f"kshot_{mode}"] = path
    if plot_per_user(groups, out / "per_user_accuracy.png"):
        paths["per_user"] = out / "per_user_accuracy.png"
    if plot_training_curves(groups, out / "training_curves.png"):
        paths["training_curves"] = out / "training_curves.png"
    return paths
