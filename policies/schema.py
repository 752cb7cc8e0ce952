"""``policies/schema.json``: the JSON schema of a policy document, for editors.

Regenerate after changing ``policies/models.py``::

    gatehouse policy schema --write policies/schema.json

``tests/test_policies.py`` fails when the committed file is stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from policies.models import json_schema

SCHEMA_PATH = Path(__file__).with_name("schema.json")


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def regenerate(path: Path = SCHEMA_PATH) -> Path:
    path.write_text(schema_text(), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(regenerate())
