#!/bin/sh
# The image's entrypoint: optionally fetch models at first start, then run `council ARGS`.
#   COUNCIL_SETUP_MODELS=small|all   run `council setup --skip-server --models ...` into $COUNCIL_HOME first
#                                    (idempotent: verified models take seconds); unset when models are mounted.
#   COUNCIL_CA_BUNDLE=FILE           a trust store for that download (a TLS-intercepting proxy), if mounted.
set -eu
if [ -n "${COUNCIL_CA_BUNDLE:-}" ] && [ -s "$COUNCIL_CA_BUNDLE" ]; then
  export PIP_CERT="$COUNCIL_CA_BUNDLE" SSL_CERT_FILE="$COUNCIL_CA_BUNDLE"
fi
if [ -n "${COUNCIL_SETUP_MODELS:-}" ]; then
  council setup --skip-server --models "$COUNCIL_SETUP_MODELS"
fi
exec council "$@"
