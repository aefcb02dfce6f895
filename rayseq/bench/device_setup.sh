#!/bin/bash
# Sourced by the GPU scripts on a machine without network access to PyPI: install the offline wheel
# folder .whl/ (ray-2.60.0 repacked without its Java jars + the RLlib dependencies a CUDA image lacks)
# into /tmp/site, which PYTHONPATH puts first. With network access, `pip install -e .` instead.
python3 - <<'PY'
import os, zipfile
z = zipfile.ZipFile(".whl/ray-2.60.0-nojars.zip")
for info in z.infolist():  # extract, keeping the executable bits (raylet, gcs_server)
    path = z.extract(info, "/tmp/site")
    mode = info.external_attr >> 16
    if mode:
        os.chmod(path, mode & 0o777)
PY
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
