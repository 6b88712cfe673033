"""The layer check (scripts/layers.py) holds for Shoal, and refuses the imports it is there to refuse."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("layers", ROOT / "scripts" / "layers.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["layers"] = mod
    spec.loader.exec_module(mod)
    return mod


def _tree(tmp: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in {(tmp / n).parent for n in files}:
        while d != tmp:
            (d / "__init__.py").touch()
            d = d.parent
    return tmp


def test_shoal_imports_only_downwards_and_has_no_cycle() -> None:
    layers = _layers()
    found = layers.imports(ROOT)
    assert len(found) > 500  # the whole package was read
    assert layers.violations(found) == []
    assert layers.cycles(layers.room_graph(found)) == []
    rooms = {layers.room_of(i.module) for i in found}
    known = {r for _n, rs, _i in layers.LAYERS for r in rs}
    assert rooms <= known, rooms - known


def test_an_upward_a_sideways_and_a_late_import_are_each_refused_with_their_rule(tmp_path: Path) -> None:
    layers = _layers()
    root = _tree(tmp_path, {
        "shoal/store/memory.py": "def f():\n    from shoal.manager import dispatcher\n",  # late, upward
        "shoal/manager/dispatcher.py": "from shoal.net.state import x\n",  # sideways
        "shoal/net/state.py": "x = 1\n",
        "shoal/manager/raft/core.py": "from shoal.model import objects\n",  # raft may not know the model
        "shoal/model/objects.py": "",
    })
    bad = layers.violations(layers.imports(root))
    assert bad == [
        "shoal.manager.dispatcher:1 imports shoal.net.state: shoal.manager and shoal.net are independent rooms "
        "of layer 'sides'",
        "shoal.manager.raft.core:1 imports shoal.model.objects: shoal.manager.raft may import only shoal, "
        "shoal.errors, shoal.clock, shoal.ids, shoal.tasks",
        "shoal.store.memory:2 imports shoal.manager.dispatcher: layer 'store' may not import the higher layer "
        "'sides'",
    ]
    assert layers.main(["--check", "--root", str(root)]) == 1


def test_a_cycle_between_rooms_is_found(tmp_path: Path) -> None:
    layers = _layers()
    root = _tree(tmp_path, {"shoal/a/m.py": "import shoal.b.m\n", "shoal/b/m.py": "from shoal.a import m\n"})
    assert layers.cycles(layers.room_graph(layers.imports(root))) == [["shoal.a", "shoal.b"]]
