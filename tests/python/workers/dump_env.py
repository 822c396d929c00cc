"""Writes this worker's environment and argv to $DUMP_DIR/<RANK>.json."""
import json
import os
import sys

with open(os.path.join(os.environ["DUMP_DIR"], os.environ["RANK"] + ".json"), "w") as f:
    json.dump({"env": dict(os.environ), "argv": sys.orig_argv}, f)
