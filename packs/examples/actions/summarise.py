"""Reads the parameters as JSON on stdin and prints a JSON result on stdout."""

import json
import sys

params = json.load(sys.stdin)
summary = {
    "host": params["host"],
    "severity": params["severity"],
    "page_oncall": params["severity"] == "critical",
    "text": f"{params['severity'].upper()} on {params['host']}: {params.get('message') or 'no message'}",
}
json.dump(summary, sys.stdout)
