#!/usr/bin/env bash
# Prepare a GPU slot: run HERE (the CPU machine with the registry), before asking for the device.
#
#   bash bench/gpu_prepare.sh
#
# Fills .gpu/ in the repository root (git-ignored through .git/info/exclude, so the device run has
# to carry it: carry [".gpu"]) with what the H200 image lacks and cannot download (no internet):
#   .gpu/whl/                          Python 3.12 manylinux x86_64 wheels of snakemake (the version of
#                                      .venv), every dependency of it the image lacks, and pulp
#   .gpu/cifar10-jpeg.tar.gz           the CIFAR-10 JPEG copy        (../shared does not travel)
#   .gpu/resnet20-cifar10-published.th the published FP32 ResNet-20 (config/fidelity-cifar10-cuda.yaml)
#   .gpu/requirements.txt              the NAME==VERSION list the wheels were downloaded from
# then prints the size of .gpu/ (it must stay well under the 64 MiB a device run carries in all).
# bench/gpu_check.sh (run THERE) installs the wheels into /tmp/site and extracts the data.
# Rerunning is cheap: wheels already in .gpu/whl are not downloaded again.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PY=${PY:-$REPO/.venv/bin/python}          # the venv whose `pip freeze` fixes the versions
SHARED=${SHARED:-$REPO/../shared/data}
GPU=$REPO/.gpu
LIMIT_MIB=${LIMIT_MIB:-60}

mkdir -p "$GPU/whl"
if [ -d .git ]; then
    mkdir -p .git/info
    for pattern in /.gpu/ /bench/gpu_out/; do   # the kit, and gpu_check.sh's default OUT
        grep -qxF "$pattern" .git/info/exclude 2>/dev/null || echo "$pattern" >> .git/info/exclude
    done
fi

# What the H200 image already has (issue 14, section 4); torch, torchvision and numpy never travel.
IMAGE_HAS="absl-py accelerate aiofiles aiohttp attrs certifi charset-normalizer click cloudpickle filelock
fsspec idna jinja2 joblib markupsafe numpy packaging pandas pillow pip psutil pygments pyyaml requests rich
scikit-learn scipy setuptools six sympy tabulate torch torchvision tqdm typing-extensions urllib3 wrapt
pytest pyarrow networkx matplotlib python-dateutil"

# The dependency closure of snakemake and pulp as installed in the venv (markers evaluated for Python
# 3.12 on Linux), minus the image's packages, at the venv's versions. typing-extensions travels
# although the image has it: pydantic (sqlmodel <- snakemake) needs a recent one, and a newer
# typing-extensions is backward compatible (45 KiB).
IMAGE_HAS="$IMAGE_HAS" "$PY" - > "$GPU/requirements.txt" <<'EOF'
import importlib.metadata as md
import os
import re
import sys

from packaging.requirements import Requirement

norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
have = {norm(n) for n in os.environ["IMAGE_HAS"].split()}
env = {"extra": "", "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix"}
found = {}


def walk(name):
    if norm(name) in found:
        return
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        sys.exit(f"gpu_prepare: {name} is not installed in the venv; cannot pin its version")
    found[norm(name)] = dist.version
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            walk(req.name)


for root in ("snakemake", "pulp"):
    walk(root)
keep = {n: v for n, v in found.items() if n not in have}
keep["typing-extensions"] = md.version("typing-extensions")
for n in ("torch", "torchvision", "numpy"):
    keep.pop(n, None)
for n, v in sorted(keep.items()):
    print(f"{n}=={v}")
EOF
echo "gpu_prepare: $(wc -l < "$GPU/requirements.txt") packages for Python 3.12 (.gpu/requirements.txt):"
tr '\n' ' ' < "$GPU/requirements.txt"; echo

# One wheel at a time, so that a package already present is skipped and a failure names its package.
have_wheel() {   # NAME VERSION: a wheel of it already in .gpu/whl (wheel names use _ for - and .)
    local stem
    stem=$(echo "$1" | tr 'A-Z.-' 'a-z__')
    ls "$GPU/whl" 2>/dev/null | tr 'A-Z' 'a-z' | grep -q "^${stem}-$2-"
}
failed=()
while IFS= read -r spec; do
    name=${spec%%==*}; version=${spec##*==}
    have_wheel "$name" "$version" && continue
    if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$GPU/whl" "$spec" 2> >(grep -v "is ignored: it is neither" >&2); then
        # No wheel on the index (connection-pool 0.0.3 is an sdist only): build one here, accepted
        # only when it comes out pure Python (py3-none-any), which installs on the 3.12 image too.
        tmp=$(mktemp -d)
        if "$PY" -m pip wheel -q --no-deps --no-binary "$name" -w "$tmp" "$spec" \
                2> >(grep -v "is ignored: it is neither" >&2) && ls "$tmp"/*-none-any.whl >/dev/null 2>&1; then
            echo "gpu_prepare: $spec: no wheel on the index, built a pure-Python one from its sdist"
            mv "$tmp"/*-none-any.whl "$GPU/whl/"
        else
            failed+=("$spec")
        fi
        rm -rf "$tmp"
    fi
done < "$GPU/requirements.txt"
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_prepare: no Python 3.12 manylinux wheel downloaded for: ${failed[*]}" >&2
    exit 1
fi

# pulp's wheel (16 MiB) bundles CBC for six platforms (mpq uses CBC only when the exact search gives
# up, or with solver: cbc); keep the linux x86_64 one (3 MiB) and rewrite RECORD to match. The wheel
# keeps its name and installs as usual.
for whl in "$GPU"/whl/pulp-*.whl; do
    [ -f "$whl" ] || continue
    "$PY" - "$whl" <<'PYEOF'
import os
import sys
import zipfile

path = sys.argv[1]
keep_cbc = "pulp/solverdir/cbc/linux/i64/"
drop = lambda n: n.startswith("pulp/solverdir/cbc/") and not n.startswith(keep_cbc) and not n.endswith("/")
with zipfile.ZipFile(path) as src:
    if not any(drop(i.filename) for i in src.infolist()):
        sys.exit(0)
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if drop(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(l for l in lines if not drop(l.split(",", 1)[0])) + "\n").encode()
            dst.writestr(info, data)
os.replace(tmp, path)
print(f"gpu_prepare: {os.path.basename(path)}: kept only the linux x86_64 CBC "
      f"({os.path.getsize(path) >> 10} KiB)")
PYEOF
done

for f in cifar10-jpeg.tar.gz resnet20-cifar10-published.th; do
    if [ ! -f "$GPU/$f" ] || ! cmp -s "$SHARED/$f" "$GPU/$f"; then
        cp "$SHARED/$f" "$GPU/$f"
    fi
done

echo "gpu_prepare: largest wheels:"
ls -S -s --block-size=K "$GPU/whl" | sed -n '2,6p'
total_kib=$(du -sk "$GPU" | cut -f1)
total_mib=$(( (total_kib + 1023) / 1024 ))
echo "gpu_prepare: .gpu/ holds $(ls "$GPU/whl" | wc -l) wheels and the data, ${total_mib} MiB in all" \
     "(whl $(du -sk "$GPU/whl" | cut -f1) KiB)"
if [ "$total_mib" -ge "$LIMIT_MIB" ]; then
    echo "gpu_prepare: .gpu/ is ${total_mib} MiB, over the ${LIMIT_MIB} MiB allowed for it" >&2
    exit 1
fi
echo "gpu_prepare: done; run on the device: bash bench/gpu_check.sh   (carry .gpu)"
