#!/bin/sh
# Parameters arrive as SLUICE_PARAM_* environment variables and as JSON on stdin.
set -eu
echo "diagnosing host ${SLUICE_PARAM_HOST} (severity ${SLUICE_PARAM_SEVERITY})"
echo "worker: $(uname -n), load: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
