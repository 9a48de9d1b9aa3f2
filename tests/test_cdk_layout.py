"""cdk/ as a house: no circle of imports (``TYPE_CHECKING`` imports and function-local ones included), the two engines'
stacks apart (they share ``run_stack.py``, not each other), and of the job only the standard-library ground floor
(``job.config``, ``job.values``, ``job.errors``), so the deploy needs nothing of the job's stack
(tests/test_deploy_lock.py runs the app with everything else blocked)."""
from __future__ import annotations

import ast
from pathlib import Path

from test_layout import _cycles, _graph

REPO = Path(__file__).resolve().parents[1]
GROUND_FLOOR = {"job", "job.config", "job.values", "job.errors"}


def test_no_circle_of_imports_in_cdk() -> None:
    assert _cycles(_graph("cdk")) == []


def test_the_stacks_share_a_base_not_each_other() -> None:
    graph = _graph("cdk")
    assert "cdk.batch_stack" not in graph["cdk.stack"] and "cdk.stack" not in graph["cdk.batch_stack"]
    assert {"cdk.run_stack"} <= graph["cdk.stack"] & graph["cdk.batch_stack"]
    assert not {"cdk.stack", "cdk.batch_stack"} & graph["cdk.outputs"]


def test_cdk_imports_only_the_jobs_ground_floor() -> None:
    outside = []
    for path in sorted((REPO / "cdk").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            outside += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] == "job" and n not in GROUND_FLOOR]
    assert outside == []


def test_the_ground_floor_imports_only_the_standard_library() -> None:
    """At import time, that is: a function may import more when it is called (``job.values.check_where`` imports
    duckdb), which the deploy never does (tests/test_deploy_lock.py proves the path at run time)."""
    import sys

    for module in GROUND_FLOOR - {"job"}:
        body = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text()).body
        imported = {a.name.split(".")[0] for n in body if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in body if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        relative = {n.module for n in body if isinstance(n, ast.ImportFrom) and n.level}
        assert imported <= set(sys.stdlib_module_names) | {"__future__"}, (module, imported)
        assert {f"job.{r}" for r in relative} <= GROUND_FLOOR, (module, relative)
