"""Registries fill themselves from their packages: adding a plugin is writing its file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from refground.errors import UnknownNameError
from refground.methods import METHODS, trainable_methods
from refground.registry import Registry, package_modules

PLUGINS = Registry[object]("widget", packages=("widget_plugins",))


def test_every_public_module_of_the_package_registers(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "widget_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "round.py").write_text(
        "from tests.test_registry import PLUGINS\n"
        "PLUGINS.register('round')(lambda **options: ('round', options))\n")
    (package / "square.py").write_text(
        "from tests.test_registry import PLUGINS\n"
        "PLUGINS.register('square')(lambda: 'square')\n")
    (package / "_helpers.py").write_text("raise RuntimeError('private modules are not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert package_modules("widget_plugins") == ["widget_plugins.round",
                                                     "widget_plugins.square"]
        assert PLUGINS.names() == ["round", "square"]
        assert PLUGINS.build("round", size=3) == ("round", {"size": 3})
        with pytest.raises(UnknownNameError, match="Did you mean 'square'"):
            PLUGINS.get("sqare")
    finally:
        for name in [m for m in sys.modules if m.startswith("widget_plugins")]:
            del sys.modules[name]


def test_trainable_methods_come_from_the_registry() -> None:
    """Tests may register tiny trainable methods of their own, so: these three, no zero-shot one."""
    trainable = set(trainable_methods())
    assert {"detr", "erpa", "regressor"} <= trainable
    zero_shot = {"graph-resolve", "crop-rank", "visual-prompt", "oracle", "center", "largest"}
    assert zero_shot <= set(METHODS.names()) and not zero_shot & trainable
