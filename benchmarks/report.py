"""The JSON result every benchmark writes beside its printed table."""
from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Dict


def write_result(path: str, result: Dict[str, Any]) -> None:
    """Adds the machine and time to `result` and writes it as JSON to `path`."""
    result.update(cpu_count=os.cpu_count(), machine=platform.machine(), time=time.strftime("%Y-%m-%d %H:%M:%S"))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")
