#!/usr/bin/env bash
# Accept new golden outputs after an intended change, both stages in order:
# Kubernetes resources -> IR (guest/translate/testdata/*.out.yaml), then
# IR -> Envoy JSON (host/xds/testdata/*.json); and the Helm chart rendered
# (charts/infergate/tests/golden/). Review the diff in git.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
INFERGATE_UPDATE_GOLDEN=1 cargo test -q -p infergate-translate --test golden
INFERGATE_UPDATE_GOLDEN=1 cargo test -q -p infergate-xds --test golden
INFERGATE_UPDATE_GOLDEN=1 cargo test -q -p infergate-e2e --test chart rendered_manifests
git status --short -- guest/translate/testdata host/xds/testdata charts/infergate/tests/golden
