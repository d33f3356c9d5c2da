"""The runtime's command line, ``stedge-runtime`` (or ``python -m stedge_runtime``): tune an artifact and say what
Encoder.load picks, on the machine an app runs on, with the runtime alone (numpy, tokenizers, an engine: no torch,
no stedge).

    stedge-runtime tune app/model --queries my_queries.txt   # writes app/model/tuning/<machine key>.json
    stedge-runtime info app/model                            # each precision tier's choice here, and why

A profile is keyed by the machine it was measured on (CPU model, ISA flags, cores, engine versions) and never read
on another, so the fastest choice for a device is measured on that device. `stedge tune` and `stedge info` do the
same where the whole toolchain is installed, and print with the text helpers here (``settings_text``,
``choice_lines``, ``profile_table``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .errors import ArtifactError, InputError, RuntimeStedgeError

Cell = tuple[str, str]  # (text, style): style "" plain, "bad" (fails a check), "warn" (below the near tier's cos)
_SETTINGS_SHOWN = (
    "threads",
    "allow_spinning",
    "performance_hint",
    "num_streams",
    "snippets",
    "snippets_above",
    "static_batch1",
    "static_pad",
    "shape_cache",
    "dynamic_quantization_group_size",
)  # settings_text's labelled keys; any other shows as k=v


# --------------------------------------------------------------------------- text both command lines print
def settings_text(s: Mapping[str, Any]) -> str:
    """An engine setting as the tuning table labels it: ``2t, latency, static batch-1 x8, padded to 8``."""
    from .select import budget_only

    parts = [f"{s['threads']}t"] if "threads" in s else []
    if "allow_spinning" in s:
        parts.append("spin" if s["allow_spinning"] else "no spin")
    if "performance_hint" in s:
        parts.append(str(s["performance_hint"]).lower())
    if "num_streams" in s:
        parts.append(f"{s['num_streams']} streams")
    if s.get("snippets") is False:
        parts.append("no snippets")
    if s.get("snippets_above"):
        parts.append(f"no snippets <= {s['snippets_above']} tokens")
    if s.get("static_batch1"):
        lean = " (budgets only)" if budget_only({"static_batch1": s["static_batch1"]}) else ""
        pad = f", padded to {s['static_pad']}" if s.get("static_pad") else ""
        parts.append(f"static batch-1 x{s['static_batch1']}{pad}{lean}")
    if s.get("shape_cache"):
        parts.append(f"{s['shape_cache']} shapes cached (budgets only)")
    group = s.get("dynamic_quantization_group_size")
    if group is not None:
        parts.append(f"run-time int8 in groups of {group}" if group else "no run-time int8")
    parts += [f"{k}={v}" for k, v in s.items() if k not in _SETTINGS_SHOWN]
    return ", ".join(parts)


def choice_lines(tier: str, choice: Mapping[str, Any]) -> tuple[str, list[str], list[str]]:
    """What Encoder.load picks for ``tier`` on this machine (an entry of ``tune.best_choices``) as one line, then
    its warnings and its notes."""
    if "error" in choice:
        return f"tier {tier}: nothing eligible ({choice['error']})", [], []
    settings, routed = settings_text(choice.get("settings") or {}), choice.get("latency_variant")
    line = f"tier {tier}: {' '.join(filter(None, (choice['variant'], settings)))} - {choice['reason']}"
    if routed:
        line += (
            f"; batch-1 calls: {' '.join(filter(None, (routed, settings_text(choice.get('latency_settings') or {}))))}"
        )
    if choice.get("max_batch_tokens"):
        line += f"; at most {choice['max_batch_tokens']} tokens per call"
    if choice.get("peak_rss_mb"):
        line += f"; peak RSS {choice['peak_rss_mb']:.0f} MB here"
    return line, [str(w) for w in choice.get("warnings") or []], [str(n) for n in choice.get("notes") or []]


def all_choice_lines(choices: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], str, list[str], list[str]]]:
    """``choice_lines`` for every tier, as (choice, line, warnings, notes), a note that an earlier tier already
    gave (one about the machine, say) left out."""
    seen: set[str] = set()
    out = []
    for tier, c in choices.items():
        line, warnings, notes = choice_lines(tier, c)
        out.append((c, line, warnings, [n for n in notes if n not in seen]))
        seen.update(notes)
    return out


def peak_text(value: Any, growth: Any = None) -> str:
    """A peak RSS figure for the table ("-": not measured; "+": still growing at the end of the memory probe, which
    a memory budget does not take)."""
    from .select import still_growing

    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.0f}" + ("+" if still_growing(value, growth) else "")


def choice_marks(choices: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """(variant, settings as JSON) -> the tiers that chose it ("near", "near bs=1" for a batch-1 route)."""
    out: dict[tuple[str, str], list[str]] = {}
    for tier, c in choices.items():
        if "variant" not in c:
            continue
        out.setdefault((c["variant"], _key(c.get("settings") or {})), []).append(tier)
        if c.get("latency_variant"):
            out.setdefault((c["latency_variant"], _key(c.get("latency_settings") or {})), []).append(f"{tier} bs=1")
    return {k: ", ".join(v) for k, v in out.items()}


def cores_text(facts: Mapping[str, Any]) -> list[str]:
    """The cores of machine ``facts`` (``machine.machine_facts``, a profile's ``machine``) as words: "14 cores",
    then "6 fast" on a hybrid CPU and "CPU quota 2.5" in a limited container."""
    parts = [f"{facts['cores_physical']} cores"]
    parts += [f"{facts['cores_performance']} fast"] if facts.get("cores_performance") else []
    return parts + ([f"CPU quota {facts['cpu_quota']:g}"] if facts.get("cpu_quota") else [])


def profile_table(
    prof: Mapping[str, Any], manifest_variants: Mapping[str, Any], choices: Mapping[str, Any]
) -> tuple[str, list[str], list[list[Cell]], str | None]:
    """The tuning table of a profile: (title, column names, rows of cells, caption), one row per variant and engine
    setting, the tiers' choices marked in the last column."""
    from .select import memory_config_key, variant_tier

    m = prof["machine"]
    bs = [str(b) for b in prof.get("batch_sizes", [1, 32]) if b != 1]
    units = [f for f in m["isa_flags"] if "vnni" in f or "bf16" in f or f.startswith("amx")] or [m.get("cpu_class", "")]
    title = f"{m['cpu']} ({', '.join(cores_text(m))}, {', '.join(units)}) - profile {m['key']}"
    agreement = "score agr. to exact here" if prof.get("task") == "reranking" else "cos to exact here"
    cols = ["variant", "tier", "settings", "bs=1 p50 ms", "bs=1 longer"]
    cols += [f"short bs={b} /s" for b in bs] + [f"passage bs={b} /s" for b in bs]
    cols += ["alone vs batch", agreement, "peak MB", "chosen"]
    peaks = {
        memory_config_key(c["variant"], c.get("settings")): peak_text(c.get("peak_rss_mb"), c.get("growth_mb"))
        for c in (prof.get("memory") or {}).get("configs") or []
    }
    marks = choice_marks(choices)
    rows: list[list[Cell]] = []
    for name, entry in prof["variants"].items():
        tier = variant_tier(manifest_variants.get(name, {})) or "-"
        inv, here = entry.get("batch_invariance_min_cos"), entry.get("min_cos_to_exact")
        inv_c = ("-", "") if inv is None else (f"{inv:.5f}", "" if inv >= 0.999 else "bad")
        here_c = ("-", "") if here is None else (f"{here:.4f}", "" if here >= 0.99 else "warn")
        if entry["status"] != "ok":
            failed = (str(entry.get("error", "failed")), "bad")
            blank = [("", "")] * (1 + 2 * len(bs))
            rows.append([(name, ""), (tier, ""), ("", ""), failed, *blank, inv_c, ("", ""), ("", ""), ("", "")])
            continue
        for run in entry["runs"]:
            s, bulk = run["settings"], run.get("bulk") or {}
            longer = f"{run['batch1_ms_p50_long']:.2f}" if "batch1_ms_p50_long" in run else "-"
            cells = [name, tier, settings_text(s), f"{run['batch1_ms_p50']:.2f}", longer]
            cells += [f"{bulk.get('short', {}).get(b, 0):.0f}" for b in bs]
            cells += [f"{bulk.get('passage', {}).get(b, 0):.1f}" for b in bs]
            row: list[Cell] = [(c, "") for c in cells] + [inv_c, here_c]
            row += [(peaks.get(memory_config_key(name, s), "-"), ""), (marks.get((name, _key(s)), ""), "")]
            rows.append(row)
    w = prof.get("workloads") or {}
    tokens = [w.get(k, {}).get("mean_tokens") for k in ("batch1", "batch1_long")] + [w.get("batch1", {}).get("source")]
    caption = table_caption(tokens, [r[cols.index("peak MB")][0] for r in rows], prof.get("memory"))
    return title, cols, rows, caption


def table_caption(tokens: list, peaks: list[str], memory: Mapping[str, Any] | None = None) -> str | None:
    """The table's caption: the batch-1 query lengths (and whether they were the app's, given with --queries), what
    a "+" on a peak figure means where one has it, and how many memory figures an earlier tune measured (kept)."""
    parts = []
    if all(tokens[:2]):
        which = "your queries" if tokens[2:] == ["queries"] else "short queries"
        parts.append(f"bs=1 on {which} ({tokens[0]:.0f} tokens) and longer ones ({tokens[1]:.0f})")
    if any(v.endswith("+") for v in peaks):
        parts.append("peak MB +: still growing at the end of the memory probe (a memory budget does not take it)")
    entries = [*((memory or {}).get("tiers") or {}).values(), *((memory or {}).get("configs") or [])]
    kept = sorted({str(e["measured"]) for e in entries if e.get("measured")})
    if kept:
        n = sum(1 for e in entries if e.get("measured"))
        parts.append(
            f"memory: {n} of {len(entries)} figures kept from the tune of {', '.join(kept)} (same variant files, "
            "settings, workloads and token budget; --remeasure-memory probes them again)"
        )
    return "; ".join(parts) or None


def _key(settings: Mapping[str, Any]) -> str:
    return json.dumps(dict(settings), sort_keys=True)


def written_text(file: Path | None, root: str | Path) -> str:
    """Where a tune wrote its profile (None: nowhere, --dry-run), saying so where that is outside the artifact."""
    if file is None:
        return "profile not written (--dry-run)"
    if Path(root).resolve() in Path(file).resolve().parents:
        return f"profile written to {file}"
    return (
        f"profile written to {file}: the artifact's folder cannot be written here, so its profiles for this user "
        "go there (stedge_runtime.profile.user_profiles), and Encoder.load reads them from there"
    )


def machine_line() -> str:
    """``info``'s line on this machine: its profile key, cores (fast ones on a hybrid CPU), a container's CPU quota
    and memory limit, and where the CPU flags were read when not from /proc/cpuinfo."""
    from . import machine

    facts = machine.machine_facts()
    parts = cores_text(facts)
    limit = machine.memory_limit_mb()
    parts += [f"memory limit {limit:.0f} MB"] if limit else []
    source = facts.get("isa_flags_from")
    parts += [f"CPU flags from {source or 'nowhere'}"] if source != "/proc/cpuinfo" else []
    return f"this machine: {machine.machine_key(facts)} ({', '.join(parts)})"


def device_line(device: str) -> str | None:
    """The line `info` prints before the choices for a device other than the CPU (None for the CPU, whose tuning
    profile and its notes apply instead)."""
    from .artifact import device_family

    return None if device_family(device) == "cpu" else f"device {device}: each tier's choice by the device's rule"


def profile_notes(root: str | Path) -> tuple[str | None, str | None]:
    """What an ``info`` command says of this machine's profile for the artifact at ``root``: (the file Encoder.load
    reads, inside the artifact or in the user's profile folder, and when it was tuned; None) where one reads, else
    (None; the command that measures one)."""
    from .machine import machine_key
    from .profile import find_profile

    try:
        found = find_profile(root, machine_key())
    except ArtifactError:  # the choices' notes say why it was ignored
        found = None
        missing = "the tuning profile for this machine does not read"
    else:
        missing = "no tuning profile for this machine"
    if found is not None:
        prof, file = found
        return f"profile for this machine: {file} (tuned {prof.get('created', '?')})", None
    return None, (
        f"{missing}: `stedge-runtime tune {root}` (or `stedge tune`) times the variants here, then Encoder.load "
        "picks the fastest of each tier from what it measured"
    )


def read_lines(path: str | Path | None, option: str) -> list[str] | None:
    """The non-empty lines of a UTF-8 text file given as ``option`` (None when not given)."""
    if path is None:
        return None
    try:
        lines = [t for t in Path(path).read_text(encoding="utf-8").splitlines() if t.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{option} {path}: cannot read it as UTF-8 text ({e})") from None
    if not lines:
        raise InputError(f"{option} {path}: no non-empty lines")
    return lines


# --------------------------------------------------------------------------- the commands
def _print_table(cols: list[str], rows: list[list[Cell]]) -> None:
    """Plain columns, numbers right-aligned; a cell that fails a check ends with "!"."""
    cells = [[t + ("!" if style else "") for t, style in r] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(cols, *cells)]
    left = {"variant", "tier", "settings", "chosen"}
    for r in [cols, *cells]:
        parts = [x.ljust(w) if c in left else x.rjust(w) for x, w, c in zip(r, widths, cols)]
        print("  ".join(parts).rstrip())
    if any(style for r in rows for _, style in r):
        print("!: the variant failed here, its alone-vs-batch agreement is under 0.999, or its cos to exact under 0.99")


def _progress() -> Callable[[str, int, int], None] | None:
    """One line on stderr, rewritten in place, when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(what: str, done: int, total: int) -> None:
        count = f" {done}/{total}" if total else ""
        sys.stderr.write(f"\r\033[K{what}{count}"[:200])
        sys.stderr.flush()

    return show


def _print_choices(choices: Mapping[str, Any]) -> None:
    for _, line, warnings, notes in all_choice_lines(choices):
        print(line)
        for extra in [*warnings, *notes]:
            print(f"    {extra}")


def _tune(args: argparse.Namespace) -> int:
    from .artifact import Manifest
    from .tune import best_choices, tune_artifact

    progress = None if args.json else _progress()
    try:
        prof, file = tune_artifact(
            args.artifact,
            args.variant,
            args.threads,
            args.quick,
            args.budget,
            read_lines(args.texts, "--texts"),
            tuple(args.batch_size or (32,)),
            progress,
            write=not args.dry_run,
            paired_cycles=args.paired_cycles,
            memory=not args.no_memory,
            queries=read_lines(args.queries, "--queries"),
            reuse_memory=not args.remeasure_memory,
            keep_choices=not args.fresh_choices,
        )
    finally:
        if progress is not None:
            sys.stderr.write("\r\033[K")
    choices = best_choices(args.artifact, profile=prof)
    if args.json:
        print(json.dumps({"profile": prof, "file": str(file) if file else None, "choices": choices}, indent=2))
        return 0
    title, cols, rows, caption = profile_table(prof, Manifest.read(args.artifact).variants, choices)
    print(title)
    _print_table(cols, rows)
    if caption:
        print(caption)
    _print_choices(choices)
    print(written_text(file, args.artifact))
    return 0


def _info(args: argparse.Namespace) -> int:
    from .artifact import Manifest
    from .machine import machine_key
    from .select import variant_tier
    from .tune import best_choices

    m = Manifest.read(args.artifact)
    choices = best_choices(args.artifact, max_memory_mb=args.max_memory_mb, device=args.device)
    if args.json:
        out = {**m.to_dict(), "machine": machine_key(), "device": args.device, "selection": choices}
        print(json.dumps(out, indent=2))
        return 0
    dim = f" dim={m.dimension}" if m.dimension is not None else ""  # a reranker's output is a score
    print(f"artifact {args.artifact}: task={m.task}{dim} max_seq_length={m.max_seq_length}")
    for name, v in m.variants.items():
        print(f"  {name}: {v.backend} {v.precision}, tier={variant_tier(v) or 'none'}")
    print(machine_line())
    other = device_line(args.device)
    if other:  # tuning profiles are the CPU's: their notes do not apply
        print(other)
        _print_choices(choices)
        return 0
    line, hint = profile_notes(args.artifact)
    if line:
        print(line)
    _print_choices(choices)
    if hint:
        print(f"note: {hint}", file=sys.stderr)
    return 0


def _at_least(kind: Callable[[str], Any], low: float) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` no smaller than ``low``."""

    def parse(text: str) -> Any:
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {kind(low)} or more, got {text}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stedge-runtime",
        description="Tune a stedge artifact on this machine and show what Encoder.load picks here, with the runtime "
        "alone (no torch). `stedge tune` / `stedge info` do the same with the whole toolchain.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "tune",
        help="time every verified variant here and write ARTIFACT/tuning/<machine key>.json",
        description="Time every verified variant of ARTIFACT the installed engines run on this machine, with their "
        "engine settings, at batch 1 and in bulk, on short texts and passages; then a paired final of the close "
        "contenders and, unless --no-memory, each choice's peak RSS in a fresh process. Writes the profile "
        "Encoder.load reads here, as `stedge tune` does (same options): into ARTIFACT/tuning/, or where ARTIFACT "
        "cannot be written, into the user's profile folder ($STEDGE_RUNTIME_PROFILES, else the runtime's cache).",
    )
    t.add_argument(
        "artifact", type=Path, metavar="ARTIFACT", help="artifact folder (written by `stedge export` or `stedge pack`)"
    )
    t.add_argument("--variant", "-v", action="append", metavar="NAME", help="tune only this variant (repeatable)")
    t.add_argument(
        "--threads", "-t", type=_at_least(int, 1), metavar="N", help="only this thread count (default: physical cores)"
    )
    t.add_argument("--quick", action="store_true", help="engine defaults only and fewer texts (~1.5 s per variant)")
    t.add_argument(
        "--budget",
        type=_at_least(float, 1.0),
        metavar="SECONDS",
        help="target seconds of the rounds (default 4 per variant)",
    )
    t.add_argument(
        "--texts", type=Path, metavar="FILE", help="a text file (one text a line) instead of the built-in samples"
    )
    t.add_argument(
        "--queries", type=Path, metavar="FILE", help="your app's queries (one a line), for the batch-1 calls alone"
    )
    t.add_argument(
        "--batch-size", "-b", type=_at_least(int, 1), action="append", metavar="N", help="bulk batch size (default 32)"
    )
    t.add_argument(
        "--paired-cycles", type=_at_least(int, 0), metavar="N", help="cycles of the paired final (0 skips it)"
    )
    t.add_argument("--no-memory", action="store_true", help="skip the peak-RSS probes")
    t.add_argument("--remeasure-memory", action="store_true", help="probe memory again, keep no earlier figure")
    t.add_argument("--fresh-choices", action="store_true", help="choose afresh, not keeping the previous choices")
    t.add_argument("--dry-run", action="store_true", help="measure and print, write nothing")
    t.add_argument("--json", action="store_true", help="print the profile and the choices as JSON")
    t.set_defaults(run=_tune)
    i = sub.add_parser(
        "info",
        help="the artifact's variants and each tier's choice on this machine, and why",
        description="The artifact's variants and what Encoder.load picks for each precision tier on this machine "
        "(from this machine's profile, else the CPU rule), and why.",
    )
    i.add_argument("artifact", type=Path, metavar="ARTIFACT", help="artifact folder")
    i.add_argument(
        "--max-memory-mb",
        type=_at_least(float, 1.0),
        metavar="MB",
        help="a memory budget, as Encoder.load's max_memory_mb",
    )
    i.add_argument(
        "--device",
        default="cpu",
        metavar="DEVICE",
        help="the device to choose for, as Encoder.load's device (default cpu; npu, gpu, cuda...: by its rule)",
    )
    i.add_argument("--json", action="store_true", help="print the manifest, the machine key and the choices as JSON")
    i.set_defaults(run=_info)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stedge-runtime ARGS``; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except RuntimeStedgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
