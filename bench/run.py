#!/usr/bin/env python3
"""Every performance figure in one run: a table, written into BENCHMARKS.md.

    python bench/run.py [--corpus /tmp/corpus] [--quick]

Runs, each in a process of its own and one after the other:
- bench/ingest.py on the corpus (12,480 and 10^5 256x256 JPEGs, 224 16.8 MP JPEGs,
  mixed PNG/WebP/JPEG): the `lookalike run --once` command beside the article's
  pipeline, with the limits behind each;
- bench/latency.py: the real service started empty, started on 10^4 images
  ingested from scratch and restarted, and started on libraries of 10^3 to
  10^6 images (seeded): start-up, latency, a burst of 1,000, idle memory;
- bench/rebuilding.py: latency on a seeded library of 10^5 while its index
  is rebuilt back to back;
- bench/check.py: the check of every results file on a seeded library of 10^6
  images, by searching every image again and by measuring what changed;
- bench/search_cost.py: what searching a new image costs at 10^3 to 10^6
  vectors, the exact scan beside the two-stage search;
- bench/index_scale.py: the index alone at 10^4 to 10^6 vectors, and on real
  latents of the shipped encoder (bench/latents.py) at 2x10^4 and 10^5, Annoy
  on the whole vectors beside the two-stage search.
Prints the tables with the targets beside them and replaces the section
between the `bench/run.py` markers of BENCHMARKS.md. `--quick` runs small
sizes (a check that it all works, minutes), and leaves BENCHMARKS.md alone.
The corpus comes from `python scripts/build_corpus.py /tmp/corpus`; the images of
the real latents from `python scripts/build_suite.py /tmp/suite` (its held-out parts).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCHMARKS = HERE.parent / "BENCHMARKS.md"
LATENTS = HERE / "results" / "latents-100000.npy"
SUITE = Path("/tmp/suite")  # bench/latents.py encodes its held-out parts
BEGIN, END = "<!-- bench/run.py: begin -->", "<!-- bench/run.py: end -->"


def figures(*argv: str) -> list[dict[str, Any]]:
    """Run a benchmark script; the JSON objects it printed, one per line."""
    started = time.perf_counter()
    print(f"$ python {' '.join(argv)}", flush=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, *argv], cwd=HERE.parent, capture_output=True,
                          text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"{argv[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    print(f"  {time.perf_counter() - started:.0f} s: {rows}", flush=True)
    return rows


def table(intro: str, columns: list[str], cells: list[list[object]]) -> list[str]:
    """A paragraph, then a Markdown table of `columns` with a row of `cells` each."""
    return [intro, "", "| " + " | ".join(columns) + " |",
            "| " + " | ".join("---" for _ in columns) + " |",
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in cells)]


def ingest_table(rows: list[dict[str, Any]], command: str) -> list[str]:
    targets = {"256x256 JPEG": 1.5, "16.8 MP JPEG": 4.0}
    return table(
        f"Bulk ingest, files on disk to results files written (`{command}`): the "
        "`lookalike run --once` command less its start-up, against the article's pipeline in "
        "one process; each side's fastest of 3 alternating rounds (the ratio of each round in "
        "brackets), with its CPU time per image, all threads, the cores it kept busy and "
        "lookalike's peak resident memory; the limits are lookalike's own stages run alone "
        "on the same images, in images/s:",
        ["corpus", "images", "article", "lookalike", "lookalike ÷ article (rounds)", "target",
         "lookalike peak MB", "article CPU ms per image (cores)",
         "lookalike CPU ms per image (cores)", "decode alone (1 thread)",
         "decode alone (2 threads)", "encode alone", "results writing alone"],
        [[r["corpus"], f"{r['images']:,}", f"{r['article']:,}", f"{r['lookalike']:,}",
          f"{r['ratio']:.2f} ({', '.join(f'{x:.2f}' for x in r['rounds'])})",
          f"≥ {targets[r['corpus']]}" if r["corpus"] in targets else "-",
          f"{r['peak_mb']:,}",
          f"{r['article_cpu_ms']:.2f} ({r['article_cores']:.2f})",
          f"{r['lookalike_cpu_ms']:.2f} ({r['lookalike_cores']:.2f})",
          f"{r['decode_one']:,}", f"{r['decode']:,}", f"{r['encode']:,}", f"{r['write']:,}"]
         for r in rows])


def service_table(rows: list[dict[str, Any]]) -> list[str]:
    return table(
        "The real service (`python bench/latency.py ...`, arguments in the first column): "
        "seconds from `lookalike run` to READY; latency from a file's close to its results "
        "file, 100 drops; a burst of 1,000 images dropped at once (wall time, and the CPU "
        "time of all the service's threads meanwhile); resident memory once "
        "idle. Targets: p50 ≤ 100 ms and p99 ≤ 500 ms at 10^5; idle memory ≤ 1.5 GB at "
        "10^6; burst cost per image flat within 2x from 10^3 to 10^6.",
        ["arguments", "images in the library", "start to READY s", "p50 ms", "p95 ms",
         "p99 ms", "burst images/s", "burst ms per image", "burst CPU ms per image",
         "idle RSS MB (anonymous)",
         "restart to READY s", "restarted idle RSS MB"],
        [[f"`{r['arguments']}`", f"{r['library'] + r['seeded']:,}", r["start_to_ready_s"],
          r["p50_ms"], r["p95_ms"], r["p99_ms"], f"{r['burst_per_s']:,}",
          f"{1000 / r['burst_per_s']:.2f}", r.get("burst_cpu_ms", "-"),
          f"{r['idle_rss_mb']:,} ({r.get('idle_anon_mb', '?')})",
          r.get("restart_to_ready_s", "-"), r.get("restarted_idle_rss_mb", "-")]
         for r in rows])


def rebuilding_table(rows: list[dict[str, Any]], command: str) -> list[str]:
    return table(
        f"Latency while the index is rebuilt (`{command}`): the service on a seeded "
        "library, its index rebuilt back to back (`index.rebuild_interval_s` 1), one image "
        "dropped every 0.1 s. The latency target above holds while the index rebuilds too.",
        ["images in the library", "seconds", "drops", "builds meanwhile", "p50 ms", "p95 ms",
         "p99 ms", "max ms"],
        [[f"{r['seeded']:,}", r["seconds"], r["drops"], r["builds"], r["p50_ms"], r["p95_ms"],
          r["p99_ms"], r["max_ms"]] for r in rows])


def check_table(rows: list[dict[str, Any]], command: str) -> list[str]:
    return table(
        f"The check of every results file (`{command}`): a full check searches every image "
        "again (timed on 1,024 of them, in chunks of 64); the check after a clean stop or a "
        "check measures the images changed since against every answered image "
        "(`daemon/check.py`), a block per idle turn. Not a target.",
        ["images", "check", "changed images", "seconds in all", "ms per image",
         "slowest step ms"],
        [[f"{r['images']:,}", r["kind"], r["entering"] or "all", f"{r['seconds']:,}",
          r["ms_per_image"] or "-", r["slowest_step_ms"] or "-"] for r in rows])


def index_table(rows: list[dict[str, Any]]) -> list[str]:
    return table(
        "The index alone (`python bench/index_scale.py --one N`: 128-d clustered vectors, "
        "32 trees, search_k 4000, in a fresh process each; peak memory includes the "
        "generated vectors). Targets at 10^6: build ≤ 120 s, query ≤ 2 ms at recall@12 ≥ "
        "0.95.",
        ["vectors", "build s", "peak MB", "query µs", "recall@12"],
        [[f"{r['vectors']:,}", r["build_s"], f"{r['peak_mb']:,}", r["query_us"], r["recall"]]
         for r in rows])


def latents_table(rows: list[dict[str, Any]]) -> list[str]:
    return table(
        f"The index on real latents (`python bench/latents.py "
        f"{LATENTS.relative_to(HERE.parent)} --count 100000`: the shipped encoder's vectors "
        "for the evaluation suite's held-out images and altered copies of them), through the "
        "service's `index.build` and `Searcher`: Annoy on the whole vectors (`index.dims` "
        "0); the two-stage index (`index.dims` 128) with 16 trees, search_k 12000 and all "
        "of 320 candidates read in full; "
        "and the default, 8 trees, search_k 8000, 640 candidates of which the 192 "
        "whose signs differ least are read in full. "
        "`python bench/index_scale.py --latents FILE --one N` plus the arguments in the "
        "first column.",
        ["arguments", "vectors", "Annoy's numbers", "build s", "Annoy file MB", "query µs",
         "recall@12"],
        [[f"`{r['arguments']}`", f"{r['vectors']:,}", r["annoy_dim"], r["build_s"],
          f"{r['ann_mb']:,}", r["query_us"], r["recall"]] for r in rows])


def search_table(rows: list[dict[str, Any]], command: str) -> list[str]:
    return table(
        f"What searching a new image costs, by library size (`{command}`): batches of 64 "
        "queries, each for its 96 nearest as a burst searches them, through the index the "
        "service builds at that size (the exact matrix below 20,000 vectors, the two-stage "
        "index above); real latents, repeated with a little noise beyond 10^5. This search "
        "is what makes a burst's cost per image grow with the library.",
        ["vectors", "index", "ms per query (wall)", "CPU ms per query (all threads)",
         "full vectors read per batch"],
        [[f"{r['vectors']:,}", r["index"], r["wall_ms"], r["cpu_ms"],
          f"{r['rows_read_per_batch']:,}"] for r in rows])


def latent_rows(sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    if not LATENTS.exists():
        figures("bench/latents.py", str(LATENTS), "--count", str(max(sizes)))
    rows = []
    for size in sizes:
        for arguments in (["--dims", "0", "--search-k", "4000", "--trees", "32"],
                          ["--dims", "128", "--trees", "16", "--search-k", "12000",
                           "--candidates", "320", "--rescore", "320"],
                          ["--dims", "128", "--trees", "8", "--search-k", "8000",
                           "--candidates", "640", "--rescore", "192"]):
            row = figures("bench/index_scale.py", "--latents", str(LATENTS), *arguments,
                          "--one", str(size))[-1]
            row["arguments"] = " ".join(arguments)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/corpus"))
    parser.add_argument("--quick", action="store_true", help="small sizes; BENCHMARKS.md untouched")
    args = parser.parse_args()
    if not args.corpus.is_dir():
        raise SystemExit(f"{args.corpus}: no corpus; make it with "
                         f"`python scripts/build_corpus.py {args.corpus}`")
    if not LATENTS.exists() and not SUITE.is_dir():  # (bench/latents.py reads it)
        raise SystemExit(f"{SUITE}: no evaluation suite; make it with "
                         f"`python scripts/build_suite.py {SUITE}`")
    quick = args.quick
    counts, large = (["300"], 6) if quick else (["12480", "100000"], 224)
    ingest_command = f"python bench/ingest.py {args.corpus} --count {' '.join(counts)} " \
        f"--large {large}"
    ingest = figures("bench/ingest.py", str(args.corpus), "--count", *counts,
                     "--large", str(large), "--json", os.devnull)
    runs = [["--library", "0"], ["--library", "1000" if quick else "10000"]]
    runs += [["--library", "0", "--seeded", str(n)]
             for n in ((1000, 3000) if quick else (1000, 10_000, 100_000, 1_000_000))]
    service = []
    for arguments in runs:
        drops = ["--drops", "20", "--burst", "200"] if quick else []
        row = figures("bench/latency.py", *arguments, *drops)[-1]
        row["arguments"] = " ".join(arguments)
        service.append(row)
    rebuilding_command = (f"python bench/rebuilding.py --seeded {3000 if quick else 100_000} "
                          f"--seconds {10 if quick else 60}")
    rebuilding = figures("bench/rebuilding.py", *rebuilding_command.split()[2:])
    check_command = f"python bench/check.py --seeded {3000 if quick else 1_000_000}"
    check = figures("bench/check.py", *check_command.split()[2:])
    sizes = (10_000, 30_000) if quick else (10_000, 100_000, 1_000_000)
    index = [figures("bench/index_scale.py", "--one", str(n))[-1] for n in sizes]
    latents = latent_rows((20_000,) if quick else (20_000, 100_000))
    search_sizes = "1000,30000" if quick else "1000,10000,100000,1000000"
    search_command = f"python bench/search_cost.py {LATENTS.relative_to(HERE.parent)} " \
        f"--sizes {search_sizes}"
    # (on the latents that `latent_rows` made)
    search = figures("bench/search_cost.py", str(LATENTS), "--sizes", search_sizes)

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = [BEGIN, f"Measured {stamp} by `python bench/run.py` (about "
               "40 minutes; the machine's two cores, shared).", "",
               *ingest_table(ingest, ingest_command), "", *service_table(service), "",
               *rebuilding_table(rebuilding, rebuilding_command), "",
               *check_table(check, check_command), "",
               *search_table(search, search_command), "",
               *index_table(index), "", *latents_table(latents), END]
    text = "\n".join(section)
    print(text)
    if quick:
        return
    current = BENCHMARKS.read_text()
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        updated = head + text + rest.split(END, 1)[1]
    else:
        updated = current.rstrip("\n") + "\n\n## Performance, all at once (`bench/run.py`)\n\n" \
            + text + "\n"
    BENCHMARKS.write_text(updated)
    print(f"written into {BENCHMARKS}")


if __name__ == "__main__":
    main()
