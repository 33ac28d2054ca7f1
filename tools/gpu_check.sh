#!/usr/bin/env bash
# GPU check: the whole test suite, the `gpu`-marked tests included, on a machine with a CUDA GPU.
#
# Installs what such a machine may lack from wheels carried along (never from a registry): every
# *.whl in $WHEELS (default .whl/: torch-pruning, ...), and onnxruntime-gpu from $ORT_WHEEL when
# that file exists (its CUDA execution provider is then tested too). Runs pytest with $WORKERS
# workers and writes a JSON summary (commit, versions, passed/failed/skipped, the failures' names)
# to $GPU_CHECK_JSON (default docs/results/gpu_check.json). Exit code: pytest's. Without pytest arguments the
# gpu-marked tests run first, on their own, then the rest.
#
#   tools/gpu_check.sh                               # everything
#   COMMIT=$(git rev-parse HEAD) tools/gpu_check.sh -k gpu   # pass pytest arguments after the options
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
ORT_WHEEL=${ORT_WHEEL:-}
WORKERS=${WORKERS:-12}
GPU_CHECK_JSON=${GPU_CHECK_JSON:-docs/results/gpu_check.json}
SITE=${SITE:-/tmp/amgp-gpu-site}
PY=${PYTHON:-python3}

mkdir -p "$SITE"
wheels=()
for wheel in "$WHEELS"/*.whl; do [ -f "$wheel" ] && wheels+=("$wheel"); done
if [ -n "$ORT_WHEEL" ] && [ -f "$ORT_WHEEL" ]; then wheels+=("$ORT_WHEEL"); fi
if [ ${#wheels[@]} -gt 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
    || { echo "gpu_check: installing ${wheels[*]} failed" >&2; exit 3; }
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the amgp-compress entry point, for the tests that call the installed command
"$PY" -m pip install -q --no-deps --no-build-isolation --no-index --target "$SITE/project" . >/dev/null 2>&1 \
  && export PATH="$SITE/project/bin:$PATH"

run_pytest() {  # run_pytest XML [pytest args...]
  local xml=$1; shift
  "$PY" -m pytest -q -n "$WORKERS" -p no:cacheprovider --junitxml="$xml" "$@"
}
if [ $# -eq 0 ]; then
  # the gpu-marked tests first, alone: a call cut short by its time limit has still run them
  first=$(mktemp --suffix=.xml); rest=$(mktemp --suffix=.xml)
  run_pytest "$first" -m gpu; first_status=$?
  run_pytest "$rest" -m "not gpu"; status=$?
  [ "$first_status" -ne 0 ] && [ "$first_status" -ne 5 ] && status=$first_status  # 5: none collected
  xmls="$first,$rest"
else
  xmls=$(mktemp --suffix=.xml)
  run_pytest "$xmls" "$@"; status=$?
fi
COMMIT=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)} "$PY" - "$xmls" "$GPU_CHECK_JSON" "$status" "$*" <<'PY'
import json, os, platform, sys, xml.etree.ElementTree as ET
from datetime import datetime, timezone

import torch

xml_paths, out_path, status, extra = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3]), sys.argv[4]
cases = [case for path in xml_paths if os.path.isfile(path) and os.path.getsize(path)
         for case in ET.parse(path).getroot().iter("testcase")]
def name(case):
    return f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
failed = [name(c) for c in cases if c.find("failure") is not None or c.find("error") is not None]
skipped = [c for c in cases if c.find("skipped") is not None]
gpu_cases = [c for c in cases if "test_gpu" in c.get("classname", "")]
try:
    import onnxruntime as ort
    ort_version, providers = ort.__version__, ort.get_available_providers()
except ImportError:
    ort_version, providers = None, []
summary = {
    "version": 1,
    "commit": os.environ.get("COMMIT", "unknown"),
    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    "command": "tools/gpu_check.sh" + (f" {extra}" if extra else ""),
    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
    "onnxruntime": ort_version, "ort_cuda_provider": "CUDAExecutionProvider" in providers,
    "pytest_exit_code": status,
    "passed": len(cases) - len(failed) - len(skipped), "failed": len(failed), "skipped": len(skipped),
    "gpu_tests": {"total": len(gpu_cases), "skipped": sum(c.find("skipped") is not None for c in gpu_cases)},
    "failures": failed,
}
os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
with open(out_path, "w", encoding="utf-8") as handle:
    json.dump(summary, handle, indent=1)
    handle.write("\n")
print(f"gpu_check: {summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped "
      f"({summary['gpu_tests']['total']} gpu tests) on {summary['gpu']}; wrote {out_path}")
PY
exit $status
