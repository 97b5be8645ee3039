#!/usr/bin/env bash
# The main job: set up .venv, make sure every registered model is trained and exported
# into model_repository/ (the shipped zoo already is), then serve it over gRPC.
# Extra arguments go to `zoo serve` (e.g. --port 8001 --device auto).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
REPOSITORY=${ZOO_REPOSITORY:-model_repository}
mapfile -t models < <(zoo models --names)
missing=()
for model in "${models[@]}"; do
    [ -f "$REPOSITORY/$model/config.pbtxt" ] || missing+=("$model")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "[run] not yet in $REPOSITORY: ${missing[*]} (training and exporting them)" >&2
    bash scripts/train-zoo.sh "${missing[@]}"
    zoo export "${missing[@]}" --repository "$REPOSITORY"
fi
exec zoo serve --repository "$REPOSITORY" "$@"
