#!/usr/bin/env bash
# Train every registered model (or those named) with its default command, skipping
# models already trained in runs/<model>/model.pt. Logs go to runs/<model>/train.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
    mapfile -t models < <(zoo models --names)
fi
for model in "${models[@]}"; do
    if [ -f "runs/$model/model.pt" ]; then
        echo "[train] $model: already trained (runs/$model/model.pt)"
        continue
    fi
    mkdir -p "runs/$model"
    echo "[train] $model: zoo train $model"
    zoo train "$model" 2> >(tee "runs/$model/train.log" >&2)
done
