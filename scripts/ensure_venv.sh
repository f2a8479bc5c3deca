# Sourced by run_tests.sh and the run scripts: creates .venv when missing and installs
# requirements.txt when it changed since the last successful install (a stamp file remembers).
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version 2>&1)"
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements.txt into .venv (first time: several minutes, ~6 GB for the CUDA torch wheel)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python -c "import torch, timm, cv2, skimage, scipy, yaml, easydict, einops, tensorboard, tqdm" \
    || { echo "[setup] the install did not complete: see the pip messages above"; exit 1; }
  echo "$want" > "$stamp"
else
  echo "[setup] .venv is up to date with requirements.txt"
fi
