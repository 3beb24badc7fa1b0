#!/usr/bin/env bash
# Extract features from a folder of media, then read the Parquet store with plain pyarrow
# (no fastslow code): the feature store is an open format, a folder of Parquet parts.
#
#   examples/extract_and_read.sh [MEDIA_DIR]
#
# Without MEDIA_DIR, a small folder of synthetic images and clips is generated first.
set -euo pipefail
export FASTSLOW_WORKSPACE="${FASTSLOW_WORKSPACE:-$(mktemp -d)/workspace}"
MEDIA_DIR="${1:-}"
if [[ -z "$MEDIA_DIR" ]]; then
  MEDIA_DIR="$(mktemp -d)/media"
  python -c "
from pathlib import Path
from fastslow_cli.demo.synth import SynthConfig, generate
generate(Path('$MEDIA_DIR'), SynthConfig(n_images=40, n_videos=8))
"
fi

# 1. extract: exit 0 = everything stored, 3 = some files failed (see errors.jsonl)
status=0
fastslow extract "$MEDIA_DIR" --set example --json > "$FASTSLOW_WORKSPACE.summary.json" || status=$?
if [[ $status -ne 0 && $status -ne 3 ]]; then exit $status; fi
echo "summary: $(cat "$FASTSLOW_WORKSPACE.summary.json")"

# 2. read the features back with pyarrow alone, from the folder extract names as "dataset"
DATASET="$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["dataset"])' "$FASTSLOW_WORKSPACE.summary.json")"
python - "$DATASET" <<'PY'
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

folder = Path(sys.argv[1])
table = pq.read_table(folder)                                  # every part at once, one row per item
meta = json.loads(table.schema.metadata[b"fastslow"])          # shapes live in the schema
print(f"{table.num_rows} items, backbone {meta['backbone']['name']}, levels (H, W, C) {meta['levels']}")
row = table.slice(0, 1).to_pylist()[0]
for i, (h, w, c) in enumerate(meta["levels"]):
    values = np.asarray(row[f"level_{i}"], dtype=np.float16).reshape(row["frames"], h, w, c)
    print(f"{row['id']} ({row['kind']}, {row['frames']} frame(s)) level_{i}: {values.shape} {values.dtype}")
PY
