#!/usr/bin/env bash
# Download the wheels the device check can use on a GPU machine that has no network: TorchJD (the
# peer of the speed sweep) and quadprog (its UPGrad / DualProj projector), for that machine's
# Python 3.12 on x86-64, into .whl/ (ignored by git). Carry .whl with the run; tools/device_check.sh
# installs them into a temporary folder when it finds them.
#
# Not carried: cvxpy and its solvers (TorchJD's CAGrad and Nash-MTL need them; about 50 MB), so the
# device sweep has no TorchJD column for cagrad and nash_mtl.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for spec in "torchjd==0.18.0" "quadprog==0.1.14"; do
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d .whl "$spec"
done
ls -la .whl
