"""Registries fill themselves from their packages: adding a plugin is writing its file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from refground.errors import ConfigError, UnknownNameError
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


SHIPPED_METHODS = ("oracle", "center", "largest", "crop-rank", "visual-prompt", "graph-resolve",
                   "regressor", "detr", "erpa")


@pytest.mark.parametrize("name", SHIPPED_METHODS)
def test_an_unknown_option_is_refused_naming_the_known_ones(name: str) -> None:
    """Every method, zero-shot or trainable, validates its options before building anything."""
    from refground.methods import build_method, method_type

    with pytest.raises(ConfigError) as info:
        build_method(name, no_such_option=1)
    message = str(info.value)
    assert message.startswith(f"invalid options for {name}: unknown option(s) no_such_option")
    known = method_type(name).config_type.model_fields
    assert all(option in message for option in known)
    if not known:
        assert "takes no options" in message


@pytest.mark.parametrize(("name", "options", "message"), [
    ("visual-prompt", {"debais": 0}, "did you mean 'debias'"),
    ("crop-rank", {"clip_batch_size": "many"}, "clip_batch_size: Input should be a valid integer"),
    ("crop-rank", {"template": 7}, "template: Input should be a valid string"),
    ("visual-prompt", {"stroke": "thick"}, "stroke: Input should be a valid number"),
    ("visual-prompt", {"color": [1, 2]}, "color"),
    ("visual-prompt", {"backgrounds": "blur"}, "backgrounds: Input should be a valid tuple"),
    ("graph-resolve", {"pair_candidates": 1.5}, "pair_candidates must be an integer >= 0"),
    ("graph-resolve", {"size_words": "yes"}, "size_words must be true or false"),
    ("graph-resolve", {"clip": 5}, "clip"),
    ("graph-resolve", {"graph_cache": ["a"]}, "graph_cache"),
])
def test_a_wrong_type_is_a_config_error_naming_the_option(name: str, options: dict[str, object],
                                                         message: str) -> None:
    from refground.methods import build_method

    with pytest.raises(ConfigError, match=rf"invalid options for {name}: .*{message}"):
        build_method(name, **options)


def test_zero_shot_defaults_are_the_documented_ones() -> None:
    from refground.methods.graph_resolve import FORWARDED, GraphResolveOptions
    from refground.methods.visual_prompt import VisualPromptOptions

    prompt = VisualPromptOptions()
    assert (prompt.prefix, prompt.marker, prompt.color, prompt.backgrounds, prompt.aggregate,
            prompt.debias) == ("This is ", "ellipse", (255, 0, 0), ("blur", "blur-gray"), "max",
                               5000)
    resolve = GraphResolveOptions()
    assert (resolve.scorer, resolve.temperature, resolve.pair_candidates) == ("crop-rank", 3.5, 4)
    assert FORWARDED == ("clip", "proposals", "proposal_options", "device", "clip_batch_size",
                         "text_cache_dir", "dtype", "encoders")


def test_the_demo_rows_come_from_the_methods_in_their_declared_order() -> None:
    from refground.demo import demo_methods

    rows = list(demo_methods())
    assert rows[:6] == ["oracle", "center", "largest", "crop-rank", "visual-prompt",
                        "graph-resolve"]
    assert rows[6:] in ([], ["erpa (synthref-erpa)"])
