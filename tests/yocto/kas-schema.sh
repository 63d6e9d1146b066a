#!/usr/bin/env bash
# Validate every kas/*.yml against the JSON schema (draft-07) that ships in the
# kas package (kas/schema-kas.json), with python jsonschema. Installs kas,
# jsonschema and PyYAML with pip when they are missing; offline otherwise.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)

if ! python3 -c 'import kas, jsonschema, yaml' 2>/dev/null; then
    echo "kas-schema: installing kas jsonschema PyYAML with pip"
    python3 -m pip install --quiet kas jsonschema PyYAML
fi

cd "$root"
python3 - kas/*.yml <<'PY'
import json, os, sys
import jsonschema, kas, yaml

schema_path = os.path.join(os.path.dirname(kas.__file__), "schema-kas.json")
with open(schema_path) as f:
    schema = json.load(f)
validator = jsonschema.Draft7Validator(schema)
print("kas-schema: kas %s, schema %s" % (kas.__version__, schema_path))

failed = 0
for path in sys.argv[1:]:
    with open(path) as f:
        doc = yaml.safe_load(f)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        failed += 1
        print("FAIL %s" % path)
        for e in errors:
            where = "/".join(str(p) for p in e.path) or "(top)"
            print("     %s: %s" % (where, e.message))
    else:
        print("PASS %s" % path)
print("kas-schema: %d file(s), %d failed" % (len(sys.argv) - 1, failed))
sys.exit(1 if failed else 0)
PY
