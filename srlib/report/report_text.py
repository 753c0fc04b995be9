"""The report's sentences: verdicts, the study's summary and caveats, and the empty states, each naming its
real cause and the command that fills it. Everything is read from records; numbers are written by `formats`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..config import STUDY_VARIANTS, VARIANT_SETS, variant_of
from ..data import dataset_key
from ..errors import SrlibError
from ..statistics import ALPHA, MAX_SEEDS, POWER, TARGET_PP
from .comparisons import (
    HEADLINE_RULE,
    Comparison,
    ComparisonStats,
    Source,
    order_variants,
    select_rules,
    select_stats,
)
from .formats import decimals, fmt_interval, fmt_p, fmt_pp
from .record_checks import Loaded, dataset_label, load_checked, one_dataset, select_dataset
from .reference import scaled_differences

# --- Verdicts ------------------------------------------------------------------------------------------

def verdict(st: ComparisonStats) -> str:
    """One sentence: the final-epoch difference, its interval, whether it is told from 0, and power."""
    return f"{st.comparison.label}: {_finding(st)}"


def _finding(st: ComparisonStats) -> str:
    n = len(st.seeds)
    half = (st.bootstrap[1] - st.bootstrap[0]) / 2 if st.bootstrap is not None else st.t_half
    head = f"{fmt_pp(st.mean, decimals(half))} pp"
    if st.bootstrap is None:  # summaries only, no per-image predictions
        if n < 2:
            return (f"{head} (one seed, no per-image predictions): no interval and no test, so this may be "
                    f"seed noise; run 3 or more seeds.")
        told = "distinguishable from 0" if st.distinguishable else f"not distinguishable from 0 with {n} seeds"
        return (f"{head} {fmt_interval(st.interval)} (t-interval over seeds; without per-image predictions "
                f"test-image sampling is not included); {told}.")
    if not sum(st.only_a_right) + sum(st.only_b_right):
        # No discordant image: every variance is 0, so intervals and power figures would be meaningless zeros.
        return (f"{head}: the two variants predicted the same class on every test image in every seed, so the "
                f"test images say nothing about the difference (e.g. runs too short to learn); no conclusion.")
    interval = fmt_interval(st.bootstrap)
    pw = st.power
    if n < 2:
        p = st.mcnemar_p[0]
        beyond = f"{'beyond' if p < ALPHA else 'within'} test-image noise (McNemar p = {fmt_p(p)})"
        resolves = (f"no power figure is given: {pw.why_not}" if pw.why_not else
                    f"this test set alone resolves about {pw.image_detectable:.2f} pp")
        return (f"{head} {interval} over the test images of one seed; {beyond}, but with one seed the training "
                f"noise is unmeasured, so it cannot be told from seed-to-seed variation; {resolves}; run 3 or "
                "more seeds.")
    told = "distinguishable from 0" if st.distinguishable else "not distinguishable from 0"
    tested = f"{head} {interval}; {told} with {n} seeds (permutation p over test images = {fmt_p(st.permutation_p)})"
    if pw.why_not:
        return f"{tested}; no power figure is given: {pw.why_not}."
    return f"{tested}; detectable with {POWER:.0%} power: {pw.detectable:.2f} pp; {_seeds_for_target(st)}."


def _seeds_for_target(st: ComparisonStats) -> str:
    """How many seeds would detect TARGET_PP, and when none would, which noise stands in the way."""
    pw, n = st.power, len(st.seeds)
    if pw.seeds_for_target is not None:
        if pw.seeds_for_target <= n:
            return f"{TARGET_PP:g} pp is detectable with these {n} seeds"
        return f"{TARGET_PP:g} pp would need about {pw.seeds_for_target} seeds"
    if pw.image_detectable is not None and pw.image_detectable >= TARGET_PP:
        return (f"{TARGET_PP:g} pp is out of reach on {st.images:,} test images however many seeds "
                f"(test-image SE {pw.image_se:.2f} pp)")
    return f"{TARGET_PP:g} pp would need more than {MAX_SEEDS:,} seeds (between-seed SD {pw.seed_sd:.2f} pp)"


def verdicts(source: Source, which: list[Comparison] | None = None) -> list[str]:
    """One verdict sentence per comparison present (plain text: the sweep prints them)."""
    return [verdict(st) for st in select_stats(source, which)]


def headline_verdicts(source: Source) -> list[str]:
    """The verdicts of the study's question (`HEADLINE_RULE`, SR − resize) at every scale and SR model."""
    return verdicts(source, select_rules(source, [HEADLINE_RULE]))


NO_COMPARISONS = "No two variants share a seed among these runs, so there is nothing to compare."


def headline(source: Source, records: list[dict] | None = None) -> str:
    """A markdown list: the SR − resize verdicts at every scale and SR model (final-epoch accuracy); without
    a pair, which partner run is missing and how to make it (`records` names it)."""
    found = select_stats(source, select_rules(source, [HEADLINE_RULE]))
    if not found:
        return no_pairs_note(records or [], how=False)
    return "\n".join(f"- **{st.comparison.label}**: {_finding(st)}" for st in found)


def no_pairs_note(records: list[dict], how: bool = True) -> str:
    """Why there is no SR − resize comparison: the SR runs without their resize partner (or no SR run), and
    (`how`) the command that makes them."""
    variants = {r["config"]["variant"] for r in records}
    lonely = [name for name in order_variants(variants) if (v := variant_of(name)) and v.is_sr
              and f"resize_x{v.scale}" not in variants]
    if not records or not lonely:
        profile = records[0]["config"]["profile"] if records else "preview"
        return ("No SR run with a resize partner of the same seed is among these runs, so there is no SR − resize "
                f"comparison; make the study with `{sweep_command(profile, 1)}`.")
    partners = sorted({f"resize_x{variant_of(v).scale}" for v in lonely})
    return (f"{', '.join(lonely)} {'has' if len(lonely) == 1 else 'have'} no {' / '.join(partners)} run of the same "
            f"seed among these runs, so there is no SR − resize comparison yet. "
            + (missing_runs_note(records) if how else "The missing runs and how to make them are listed below."))


CONTROLS_NOTE = ("The controls `nearest_x2` / `nearest_x4` are not among these runs, so more pixels and better "
                 "pixels cannot be told apart here; add them with `srlib sweep --variants controls` (finished "
                 "runs are reused).")


def no_quality_note(records: list[dict], quality: dict | None, where: str) -> str:
    """Why "is it the pixels or the model?" has no points: no SR − resize pair, or no SR-quality record."""
    if not select_rules(records, [HEADLINE_RULE]):
        return no_pairs_note(records)
    if quality is None:
        return (f"There is no SR-quality measurement at `{where}` (the SR-quality page writes it; "
                "`srlib sr-quality --out` makes one), so there is nothing to plot.")
    return ("The SR-quality measurement has no entry for the SR variants of these runs (measured: "
            f"{', '.join(sorted({str(r.get('variant') or r.get('model')) for r in quality.get('results', [])}))}); "
            "rerun `srlib sr-quality` with their models.")


# --- One run -------------------------------------------------------------------------------------------

def device_name(record: dict) -> str:
    device = record["provenance"]["device"]
    return device.get("gpu") or device.get("cpu") or "unknown device"


def run_summary(record: dict) -> str:
    """One markdown sentence on one run: what was trained, on what data, how well, how fast, where."""
    c, s, d = record["config"], record["summary"], record["data"]
    width = record.get("model", {}).get("width", c.get("width"))
    parameters = record.get("model", {}).get("parameters")
    model = f"ResNet-18 width {width}" + (f" ({parameters:,} parameters)" if parameters is not None else "")
    precision = f" ({record['precision']})" if record.get("precision") else ""
    return (
        f"**{c['variant']}**, seed {c['seed']}, profile `{c['profile']}`: {record['input_px']} px inputs, {model}, "
        f"{len(record['epochs'])} epochs on {d['train_subset']['size']:,} training / {d['test_subset']['size']:,} "
        f"test images of {dataset_label(d['dataset'])}. "
        f"Max test accuracy {s['max_test_acc']:.2f}% (epoch {s['best_epoch']}), mean of the 5 best epochs "
        f"{s['top5_mean_test_acc']:.2f}%, final {s['final_test_acc']:.2f}%; {s['train_seconds']:.0f} s of training "
        f"on {device_name(record)}{precision}."
    )


# --- The study as a whole: facts, caveats, what is missing, what was left out --------------------------

def study_facts(records: list[dict]) -> dict:
    """What the prose of the report needs to say about these runs (one dataset; profile, seeds, devices)."""
    first = one_dataset(records)[0]
    return {
        "profiles": sorted({r["config"]["profile"] for r in records}),
        "seeds": sorted({r["config"]["seed"] for r in records}),
        "variants": order_variants({r["config"]["variant"] for r in records}),
        "dataset": dataset_label(first["data"]["dataset"]),
        "lossy": bool(first["data"]["dataset"].get("lossy")),
        "train_size": first["data"]["train_subset"]["size"],
        "test_size": first["data"]["test_subset"]["size"],
        "width": first["config"]["width"],
        "epochs": first["config"]["epochs"],
        "devices": sorted({device_name(r) for r in records}),
        "commits": sorted({str(r["provenance"]["git"].get("commit"))[:10] for r in records}),
    }


def study_summary(records: list[dict]) -> str:
    """One markdown paragraph: which runs, what network and data, where and with which code."""
    f = study_facts(records)
    runs = f"{len(records)} run{'s' if len(records) > 1 else ''}"
    return (f"On **{f['dataset']}**: {runs} of profile {', '.join(f'`{p}`' for p in f['profiles'])}: variants "
            f"{', '.join(f['variants'])}; seeds {', '.join(map(str, f['seeds']))}; ResNet-18 width {f['width']}, "
            f"{f['epochs']} epochs on subsets of {f['train_size']:,} training and {f['test_size']:,} test images; "
            f"devices: {', '.join(f['devices'])}; code commit(s) {', '.join(f['commits'])}. "
            "Every table and figure on this page is on this dataset.")


def caveats(records: list[dict]) -> list[str]:
    """What a reader must keep in mind about these runs, one markdown sentence each."""
    f = study_facts(records)
    found = []
    if f["lossy"]:
        found.append(f"The data is {f['dataset']}: absolute accuracies are a few points below a lossless copy's "
                     "and not comparable with the reference report; differences between variants trained on the "
                     "same copy are comparable.")
    scaled = [p for p in f["profiles"] if p != "paper"]
    if scaled:
        found.append(f"Profile {', '.join(f'`{p}`' for p in scaled)} is a scaled-down protocol (narrower network, "
                     "subset, fewer epochs): not only its absolute numbers but also its differences between "
                     f"variants may not carry to the reference protocol{_beside_reference(records)}.")
    if len(f["seeds"]) < 2:
        found.append("One seed per variant: the intervals cover only the sampling of test images, not training "
                     "noise, so a difference may be seed-to-seed variation.")
    if missing_runs(records):
        found.append(missing_runs_note(records))
    found.append('"max" and "top-5 mean" are picked on the test set and therefore optimistic; '
                 "the final-epoch accuracy is the unbiased one, and the verdicts use it.")
    return found


def _beside_reference(records: list[dict]) -> str:
    """Our differences beside the reference report's, where it has both variants (its statistic: max)."""
    pairs = scaled_differences(records)
    if not pairs:
        return ""
    return (" (max test accuracy, here vs the reference report: "
            + "; ".join(f"{label} {fmt_pp(ours)} vs {fmt_pp(theirs)} pp" for label, ours, theirs in pairs) + ")")


def missing_runs(records: list[dict], variants: Iterable[str] = STUDY_VARIANTS) -> list[tuple[str, int]]:
    """(variant, seed) pairs of the study (or any variant present) that have no finished run for a seed
    some other variant has."""
    present = {(r["config"]["variant"], r["config"]["seed"]) for r in records}
    seeds = sorted({s for _, s in present})
    wanted = order_variants(set(variants) | {v for v, _ in present})
    return [(v, s) for v in wanted for s in seeds if (v, s) not in present]


def sweep_command(profile: str, seeds: int, variants: Iterable[str] = STUDY_VARIANTS) -> str:
    """The `srlib sweep` line that makes these runs (a named variant set where one matches)."""
    variants = order_variants(variants)
    named = [name for name, members in VARIANT_SETS.items() if set(members) == set(variants)]
    extra = "" if named[:1] == ["study"] else f" --variants {named[0] if named else ' '.join(variants)}"
    return f"srlib sweep --profile {profile} --seeds {seeds}{extra}"


def missing_runs_note(records: list[dict]) -> str:
    """A markdown sentence naming the missing runs and the command that makes them (finished runs are reused)."""
    missing = missing_runs(records)
    f = study_facts(records)
    names = ", ".join(f"{v} seed {s}" for v, s in missing)
    variants = set(f["variants"]) | set(STUDY_VARIANTS)
    if f["profiles"][0] == "paper":
        how = ("on a GPU: `srlib kit assemble --variants " + " ".join(sorted({v for v, _ in missing}))
               + "`, then `scripts/gpu_paper.sh` there and `srlib kit unpack` here (the book's Guide, "
               "\"Paper scale on a GPU\")")
    else:
        how = f"with `{sweep_command(f['profiles'][0], max(f['seeds']) + 1, variants)}` (finished runs are reused)"
    return f"Missing runs (not in the tables or the comparisons they belong to): {names}. Make them {how}."


def require_records(out: str | os.PathLike, profile: str, dataset: str | None = None) -> Loaded:
    """The checked records of `profile` under `out` on one dataset (`dataset`: its name, key or a content-hash
    prefix; default the one with most runs), what was left out and why, or an error saying how to make them."""
    records, rejected = load_checked(out, profile)
    rejected = [(_relative(path, out), why) for path, why in rejected]
    if not records:
        left_out = "; ".join(f"{p}: {w}" for p, w in rejected)
        raise SrlibError(f"no finished runs of profile {profile!r} under {out}/{profile}"
                         f"{f' ({len(rejected)} left out: {left_out})' if rejected else ''}"
                         f"; make them with `{sweep_command(profile, 1)}` (or `make report PROFILE={profile}`), or "
                         "point the notebook's `out` parameter at the folder that holds them")
    chosen, others = select_dataset(records, dataset)
    labels = {dataset_key(r["data"]["dataset"]): dataset_label(r["data"]["dataset"]) for r in records}
    return Loaded(chosen, rejected, others, labels, str(out))


def _relative(path: str, out: str | os.PathLike) -> str:
    try:
        return str(Path(path).relative_to(Path(out)))
    except ValueError:
        return str(path)


def loading_notes(loaded: Loaded) -> str:
    """Markdown: the records left out (with the reason) and the other datasets' runs, not shown here."""
    lines = [f"- **Left out**: `{path}`: {why}." for path, why in loaded.rejected]
    lines += [f"- **Not on this page**: {n} run{'s' if n > 1 else ''} on {loaded.labels.get(key, key)} (runs on "
              f"different data are never pooled or compared); its results page: `make report RECORDS={loaded.out} "
              f"DATASET={key}` (trains nothing; `srlib sweep --records {loaded.out} --dataset {key}`), or this "
              f"notebook with `dataset = \"{key}\"`."
              for key, n in loaded.others.items()]
    return "\n".join(lines)
