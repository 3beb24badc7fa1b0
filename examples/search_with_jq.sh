#!/usr/bin/env bash
# Search from the shell and post-process the JSON Lines with jq.
#
# Needs a built index: run `fastslow demo` (or `fastslow demo --quick`) first, or
# `fastslow index build` on your own media. Uses ./.fastslow or $FASTSLOW_WORKSPACE, and
# the workspace's default index unless INDEX is given.
#
#   examples/search_with_jq.sh [INDEX]
set -euo pipefail
index=()
if [[ -n "${1:-}" ]]; then index=(--index "$1"); fi
command -v jq >/dev/null || { echo "jq is not installed (e.g. apt install jq)" >&2; exit 1; }

echo "# 1. one query, Fast top 20 re-ranked by the Slow model: rank, score and path of the best 5"
fastslow search "a red circle left of a blue square" "${index[@]}" -k 5 --rerank 20 --json \
  | jq -r '"\(.rank)\t\(.score | . * 1000 | round / 1000)\t\(.path)"'

echo "# 2. many queries on stdin (models loaded once): the best hit of each, as TSV"
printf '%s\n' "a green triangle moving up" "a single white diamond" "a blue square above a yellow cross" \
  | fastslow search - "${index[@]}" -k 1 --rerank 20 --json \
  | jq -r '[.query, .kind, .path] | @tsv'

echo "# 3. videos only, with the time of the best-matching frame"
fastslow search "a red circle moving left" "${index[@]}" -k 20 --json \
  | jq -r 'select(.kind == "video") | "\(.path) at \(.timestamp)s"'
