"""The package's layers point one way (issue 24 item 3): every import of every module of
ds_minimodel/, at module level or inside a function, goes to its own room or to a room below it
in ds_minimodel/layers.py's written order; no modules import each other round a cycle at module
level; the library never imports the checkout's bench/, launchers/ or tests/; and only
training/engine.py imports DeepSpeed across ds_minimodel/, launchers/ and bench/.

The imports are read with `ast` (nothing is imported), so the check costs well under a second.
The checks run on a {module name: source} map, so the tests below also plant an upward import
and a cycle in a copy of the real sources and see each reported by name.
"""
from __future__ import annotations

import ast
from pathlib import Path

from ds_minimodel.layers import DEEPSPEED_IMPORTER, LAYERS

REPO = Path(__file__).resolve().parent.parent
PKG = "ds_minimodel"
CHECKOUT_ONLY = ("bench", "launchers", "tests")  # directories of the checkout, not of the package


def module_sources(root: Path, package: str) -> dict[str, str]:
    """{dotted module name: source} of every .py file under root (a package's __init__ is the
    package's own name)."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = (package,) + f.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f.read_text(encoding="utf-8")
    return out


def is_package(name: str, sources: dict[str, str]) -> bool:
    return any(m.startswith(name + ".") for m in sources)


def imports(name: str, source: str, sources: dict[str, str]):
    """(target, line, at_module_level) for each import in the module: target is the dotted name
    imported (a module of `sources` where `from P import n` names a submodule, else P or the
    outside module). At module level: run when the module is imported (not inside a function)."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def at_module_level(node) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return False
        return True

    here = name if is_package(name, sources) or name == PKG else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, at_module_level(node)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                inside = base.split(".")[0] == PKG
                yield (sub if sub in sources or not inside else base), node.lineno, at_module_level(node)


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_problems(sources: dict[str, str]) -> list[str]:
    """One line per import that runs up the layers (or leaves the package for the checkout), and
    per room the written order lacks or names without a module."""
    rank = {r: i for i, r in enumerate(LAYERS)}
    problems = [f"room {r!r} (module {m}) is not in ds_minimodel/layers.py's LAYERS: add it at its level"
                for r, m in sorted({room(m): m for m in sources}.items()) if r not in rank]
    problems += [f"LAYERS names {r!r}, which is no module or subpackage of ds_minimodel"
                 for r in LAYERS if r not in {room(m) for m in sources}]
    for name, source in sorted(sources.items()):
        for target, line, _ in imports(name, source, sources):
            top = target.split(".")[0]
            if top in CHECKOUT_ONLY:
                problems.append(f"{name} (line {line}) imports {target}: the package must not depend on the "
                                f"checkout's {top}/")
                continue
            if target not in sources:
                continue
            src, dst = room(name), room(target)
            if src in rank and dst in rank and rank[dst] > rank[src]:
                problems.append(f"{name} (line {line}, layer {src!r}) imports {target} (layer {dst!r}, above "
                                f"it in ds_minimodel/layers.py)")
    return problems


def module_cycles(sources: dict[str, str]) -> list[list[str]]:
    """Cycles of module-level imports between the package's modules (an import of a module also
    runs its packages' __init__, counted unless the importer sits inside that package)."""
    edges: dict[str, set[str]] = {m: set() for m in sources}
    for name, source in sources.items():
        for target, _, at_module_level in imports(name, source, sources):
            if not at_module_level or target not in sources:
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # the module and the packages it sits in
                t = ".".join(parts[:i])
                if t in sources and t != name and not name.startswith(t + "."):
                    edges[name].add(t)
    # Tarjan's strongly connected components; a component of more than one module is a cycle.
    index, low, on, stack, comps, counter = {}, {}, set(), [], [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for m in sorted(edges):
        if m not in index:
            strong(m)
    return comps


def deepspeed_importers(files: list[Path]) -> list[str]:
    """file:line of each import of DeepSpeed outside the engine."""
    engine = REPO / (DEEPSPEED_IMPORTER.replace(".", "/") + ".py")
    out = []
    for f in files:
        if f == engine:
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n.split(".")[0] == "deepspeed" for n in names):
                out.append(f"{f.relative_to(REPO)}:{node.lineno}")
    return out


SOURCES = module_sources(REPO / PKG, PKG)


# --------------------------------------------------------------------------------------------
# The package as it is


def test_every_import_points_down_the_written_layers():
    assert len(SOURCES) > 50 and "ds_minimodel.training.loop" in SOURCES  # the walk found the package
    problems = layer_problems(SOURCES)
    assert not problems, "imports against ds_minimodel/layers.py:\n" + "\n".join(problems)


def test_no_module_level_import_cycle():
    cycles = module_cycles(SOURCES)
    assert not cycles, "module-level import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_only_the_engine_imports_deepspeed():
    files = [f for d in ("ds_minimodel", "launchers", "bench") for f in sorted((REPO / d).rglob("*.py"))]
    assert REPO / "ds_minimodel/training/engine.py" in files and len(files) > 80
    found = deepspeed_importers(files)
    assert not found, f"DeepSpeed imported outside {DEEPSPEED_IMPORTER}: {', '.join(found)}"
    # ...and the engine really is the one that does (the rule names a real importer).
    engine = REPO / "ds_minimodel/training/engine.py"
    assert "import deepspeed" in engine.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# The checks catch what they are for: planted into a copy of the real sources


def test_a_planted_upward_import_is_named():
    planted = dict(SOURCES)
    # training (the loop's room) reaching up into the steps, inside a function as loop.py once did
    planted["ds_minimodel.training.loop"] += ("\n\ndef _planted():\n"
                                              "    from ds_minimodel.steps.pretrain import run_pretrain\n")
    line = planted["ds_minimodel.training.loop"].count("\n")
    assert layer_problems(planted) == [
        f"ds_minimodel.training.loop (line {line}, layer 'training') imports ds_minimodel.steps.pretrain "
        f"(layer 'steps', above it in ds_minimodel/layers.py)"]
    planted = dict(SOURCES)
    planted["ds_minimodel.model"] = "import ds_minimodel.study.render\n" + planted["ds_minimodel.model"]
    assert layer_problems(planted) == [
        "ds_minimodel.model (line 1, layer 'model') imports ds_minimodel.study.render (layer 'study', "
        "above it in ds_minimodel/layers.py)"]


def test_a_planted_cycle_and_a_checkout_import_are_named():
    planted = dict(SOURCES)
    # one_time_cost imports render at module level, render imports it back (the study's old cycle)
    planted["ds_minimodel.study.render"] = ("from ds_minimodel.study import one_time_cost\n"
                                            + planted["ds_minimodel.study.render"])
    planted["ds_minimodel.study.one_time_cost"] = ("from ds_minimodel.study.render import ratio_line\n"
                                                   + planted["ds_minimodel.study.one_time_cost"])
    assert module_cycles(planted) == [["ds_minimodel.study.one_time_cost", "ds_minimodel.study.render"]]
    # the same pair inside functions is no module-level cycle (but still checked for direction)
    planted = dict(SOURCES)
    planted["ds_minimodel.study.render"] += "\n\ndef _x():\n    from ds_minimodel.study import one_time_cost\n"
    planted["ds_minimodel.study.one_time_cost"] += "\n\ndef _y():\n    from ds_minimodel.study import render\n"
    assert module_cycles(planted) == []
    planted = dict(SOURCES)
    planted["ds_minimodel.method.flops"] += "\n\ndef _z():\n    from bench import flops_check\n"
    assert layer_problems(planted) == [
        f"ds_minimodel.method.flops (line {planted['ds_minimodel.method.flops'].count(chr(10))}) imports "
        f"bench.flops_check: the package must not depend on the checkout's bench/"]


def test_a_room_missing_from_the_written_order_is_named():
    planted = dict(SOURCES)
    planted["ds_minimodel.newroom"] = "from ds_minimodel.model import MLMEncoder\n"
    assert layer_problems(planted) == [
        "room 'newroom' (module ds_minimodel.newroom) is not in ds_minimodel/layers.py's LAYERS: add it at its "
        "level"]


def test_relative_imports_are_resolved():
    # No module of the package uses them today; the check must still see one if it comes.
    planted = dict(SOURCES)
    planted["ds_minimodel.tokenizers.base"] += "\n\ndef _r():\n    from ..steps import pretrain\n"
    planted["ds_minimodel.tokenizers"] += "\n\ndef _s():\n    from .. import pipeline\n"
    found = layer_problems(planted)
    assert len(found) == 2
    assert found[0].startswith("ds_minimodel.tokenizers (line ") and "imports ds_minimodel.pipeline (layer " \
        "'pipeline'" in found[0]
    assert found[1].startswith("ds_minimodel.tokenizers.base (line ") and "imports ds_minimodel.steps.pretrain " \
        "(layer 'steps'" in found[1]


def test_a_planted_deepspeed_import_is_named(tmp_path, monkeypatch):
    bench_file = tmp_path / "bench_x.py"
    bench_file.write_text("import torch\n\n\ndef f():\n    from deepspeed.accelerator import get_accelerator\n")
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    assert deepspeed_importers([bench_file]) == ["bench_x.py:5"]
