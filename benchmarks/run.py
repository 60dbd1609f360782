"""Run the benchmarks and write the results as Markdown.

``python -m benchmarks.run``            full sizes, writes ``benchmarks/results.md`` (``make bench``)
``python -m benchmarks.run --smoke``    tiny sizes, writes to a temporary file unless ``--output`` is given
``--only export,waiting,ingest,imports,ratelimit,object_storage`` runs a subset; so do names: ``python -m benchmarks.run B5``;
a subset also writes to a temporary file unless ``--output`` is given.

Performance claims are ratios measured side by side in one run; absolute
figures depend on the machine and its load and are given for context only.
Exit status is 1 when a benchmark crashed (a missed goal is not a crash).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import INFO, ROOT, Section, machine, quiet_logs, setup_airflow_env

BENCHMARKS = ("export", "waiting", "ingest", "imports", "ratelimit", "object_storage")
NUMBERS = {f"B{n}": name for n, name in enumerate(BENCHMARKS, start=1)}
RESULTS = ROOT / "benchmarks" / "results.md"


def _run_one(name: str, smoke: bool) -> tuple[Section, bool]:
    import importlib

    module = importlib.import_module(f"benchmarks.{name}")
    started = time.perf_counter()
    try:
        return module.run(smoke=smoke), True
    except Exception as err:
        traceback.print_exc()
        section = Section(f"{name} — crashed")
        section.add("benchmark", f"crashed: {type(err).__name__}: {str(err)[:300]}", status="error")
        section.seconds = time.perf_counter() - started
        return section, False


def render(sections: list[Section], *, smoke: bool, total: float) -> str:
    info = machine()
    lines = [
        "# Benchmarks" + (" (smoke run: tiny sizes, figures meaningless)" if smoke else ""),
        "",
        f"Run on {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} with `python -m benchmarks.run"
        f"{' --smoke' if smoke else ''}` in {total / 60:.1f} min. Performance claims are ratios measured side by "
        "side in this one run; absolute rates depend on the machine and on whatever else it was running.",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in info.items()],
        "",
        "## Summary of goals",
        "",
        "| benchmark | metric | measured | goal | status |",
        "|---|---|---|---|---|",
    ]
    for section in sections:
        for row in section.rows:
            if row.goal and row.status != INFO:
                lines.append(f"| {section.title.split(' — ')[0]} | {row.metric} | {row.measured} | {row.goal} | "
                             f"{row.status} |")  # fmt: skip
    lines.append("")
    lines += [section.markdown() for section in sections]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; results to a temporary file")
    parser.add_argument("--output", type=Path, help="where to write the Markdown results")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}")
    parser.add_argument("numbers", nargs="*", metavar="B1..B6", help="run only these benchmarks (by number)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if args.numbers:
        unknown_numbers = [n for n in args.numbers if n.upper() not in NUMBERS]
        if unknown_numbers:
            parser.error(f"unknown benchmark(s): {unknown_numbers} (known: {', '.join(NUMBERS)})")
        names = [NUMBERS[n.upper()] for n in args.numbers]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {sorted(unknown)}")
    # only a full run replaces benchmarks/results.md; a smoke run or a subset goes to a temporary file
    partial = args.smoke or names != list(BENCHMARKS)
    output: Path = args.output or (
        Path(tempfile.mkdtemp(prefix="cekura-bench-")) / "results.md" if partial else RESULTS
    )

    setup_airflow_env()
    quiet_logs()
    started = time.perf_counter()
    sections: list[Section] = []
    ok = True
    for name in names:
        print(f"== {name} ...", file=sys.stderr, flush=True)
        section, fine = _run_one(name, args.smoke)
        ok &= fine
        sections.append(section)
        print(section.markdown(), file=sys.stderr, flush=True)
    text = render(sections, smoke=args.smoke, total=time.perf_counter() - started)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"results written to {output}", flush=True)
    if output == RESULTS and names == list(BENCHMARKS):
        from scripts.readme_sections import replace_section

        if replace_section("benchmarks", readme_summary(text)):
            print("updated the Benchmarks section of README.md", flush=True)
    return 0 if ok else 1


def readme_summary(results: str) -> str:
    """The README's copy of a full run: its date line and the summary of goals, linking to the rest."""
    from scripts.readme_sections import docs_link, repo_link

    lines = results.splitlines()
    run_line = next((line for line in lines if line.startswith("Run on ")), "")
    start = lines.index("## Summary of goals") + 2
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return "\n".join(
        [run_line, "", *lines[start:end], "", "Every figure, with the method and the machine: "
         f"[benchmarks/results.md]({repo_link('benchmarks/results.md')}); what they mean: "
         f"[docs/benchmarks.md]({docs_link('benchmarks')})."]
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
