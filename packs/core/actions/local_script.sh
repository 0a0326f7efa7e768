#!/bin/sh
# The script text arrives in the environment, never on a command line that a shell re-parses.
exec "$SLUICE_PARAM_SHELL" -c "$SLUICE_PARAM_SCRIPT"
