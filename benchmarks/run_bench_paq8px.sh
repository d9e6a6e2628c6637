#!/usr/bin/env bash
# tinyzip (default model) against paq8px -8 and xz -9e, each file alone, every round trip
# verified; written to benchmarks/results/bench_paq8px_$NAME.{json,md}. paq8px must be on PATH
# (build it from source: docs/bench.md, "paq8px baseline"). paq8px -8 runs at about 2 kB/s
# each way on one core, so whole loghub (2.9 MB) takes about 45 minutes.
#
#   PATH=/tmp/paqbin:$PATH bash benchmarks/run_bench_paq8px.sh                 # loghub
#   CORPUS=../shared/corpus/kafka NAME=kafka FIRST=8 SAMPLE_BYTES=100000 \
#       PATH=/tmp/paqbin:$PATH bash benchmarks/run_bench_paq8px.sh
#
# Settings (environment):
#   CORPUS        folder to bench   (default: shared/corpus/loghub beside or in the repo)
#   NAME          results file stem (default: the folder's name)
#   FIRST         only the first N files, sorted as the bench sorts them (default: all)
#   SAMPLE_BYTES  only the first N bytes of each file, cut at a line end (default: whole)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
command -v paq8px >/dev/null || { echo "paq8px not on PATH (see docs/bench.md)" >&2; exit 2; }

if [[ -z "${CORPUS:-}" ]]; then
    for c in "$repo/../shared/corpus/loghub" "$repo/shared/corpus/loghub"; do
        if [[ -d "$c" ]]; then CORPUS="$c"; break; fi
    done
fi
: "${CORPUS:?set CORPUS: no shared/corpus/loghub found beside the repo}"
NAME="${NAME:-$(basename "$CORPUS")}"

if [[ -n "${FIRST:-}" ]]; then
    mapfile -t paths < <(find "$CORPUS" -type f ! -name SOURCE.txt ! -path '*/.*' | LC_ALL=C sort | head -n "$FIRST")
else
    paths=("$CORPUS")
fi
out="benchmarks/results"
args=("${paths[@]}" --exclude SOURCE.txt --codecs xz,paq8px,tinyzip
      --json "$out/bench_paq8px_$NAME.json" --md "$out/bench_paq8px_$NAME.md")
if [[ -n "${SAMPLE_BYTES:-}" ]]; then args+=(--sample-bytes "$SAMPLE_BYTES"); fi

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
python -m tinyzip bench "${args[@]}"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
