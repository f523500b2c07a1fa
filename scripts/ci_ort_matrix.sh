#!/usr/bin/env bash
# ONNX Runtime matrix: the parity subset (scripts/ort_parity.py) on the newest onnxruntime (the
# project venv) and on the oldest one pyproject declares (a bare venv: that onnxruntime, numpy
# and the runtime's dependencies, no torch), on tiny bundles of each model family. The oldest
# run is compared with the newest run's saved outputs and fails on a max |delta| > 1e-5 (INT8
# end to end: relative L2 > 1e-3, see ort_parity.py), or on any case that does not run.
#
# Usage (from the project venv): bash scripts/ci_ort_matrix.sh
# Env: ORT_OLDEST (default: pyproject's minimum), ORT_MATRIX_DIR (default: a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."

OLDEST="${ORT_OLDEST:-$(python -c '
import re
version = re.search(r"\"onnxruntime>=([0-9.]+)", open("pyproject.toml").read()).group(1)
print(version + ".0" if version.count(".") == 1 else version)
')}"
WORK="${ORT_MATRIX_DIR:-$(mktemp -d)}"
mkdir -p "$WORK"
echo "ORT matrix in $WORK: newest $(python -c 'import onnxruntime; print(onnxruntime.__version__)'), oldest $OLDEST"

# Tiny bundles (random weights, quantized) of the four families the test suite uses, and a
# 1024-wide one.
python - "$WORK" <<'EOF'
import sys
from pathlib import Path

import yaml

sys.path.insert(0, "tests")
from conftest import FAMILIES, family_config  # noqa: E402

from pocket_tts_onnx.export.loading import ModelSource  # noqa: E402
from pocket_tts_onnx.export.pipeline import export_bundle  # noqa: E402

work = Path(sys.argv[1])
configs = {family: family_config(family) for family in FAMILIES}
# The released width (1024, one layer): INT8 kernels take other paths at that size.
wide = configs["wide"] = family_config("lsd")
wide["flow_lm"]["transformer"].update(d_model=1024, num_heads=4, num_layers=1, hidden_scale=1)
wide["flow_lm"]["lookup_table"]["dim"] = 1024
for family, data in configs.items():
    config = work / f"{family}.yaml"
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    source = ModelSource(config=config, random_init=True, seed=0)
    export_bundle(source, work / "bundles" / family, quantize=True, verify=False)
print("bundles exported")
EOF

# The oldest declared onnxruntime in its own venv, with the runtime's dependencies.
if [ ! -x "$WORK/venv-oldest/bin/python" ]; then
    python -m venv "$WORK/venv-oldest"
fi
"$WORK/venv-oldest/bin/python" -m pip install --quiet --disable-pip-version-check \
    "onnxruntime==$OLDEST" numpy sentencepiece tokenizers soundfile scipy safetensors

status=0
for bundle in "$WORK"/bundles/*/; do
    name="$(basename "$bundle")"
    echo "== $name"
    python scripts/ort_parity.py --bundle "$bundle" --out "$WORK/newest-$name.npz" || status=1
    PYTHONPATH=src "$WORK/venv-oldest/bin/python" scripts/ort_parity.py --bundle "$bundle" \
        --out "$WORK/oldest-$name.npz" --reference "$WORK/newest-$name.npz" || status=1
done
[ "$status" = 0 ] && echo "ORT matrix: OK" || echo "ORT matrix: FAIL"
exit "$status"
