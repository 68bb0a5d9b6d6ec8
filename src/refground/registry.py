"""Name -> factory registries, so methods and proposers are chosen by name, not by if-chains."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from refground.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to factories, filled by the ``@registry.register("name")`` decorator.

    Factories register when their module is imported; ``modules`` lists the modules to import
    lazily on first lookup, so heavy optional dependencies load only when their entry is used.
    """

    def __init__(self, kind: str, modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._modules = modules
        self._factories: dict[str, Callable[..., T]] = {}
        self._imported = False

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories and self._factories[name] is not factory:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return decorator

    def _import_modules(self) -> None:
        if not self._imported:
            import importlib

            for module in self._modules:
                importlib.import_module(module)
            self._imported = True

    def names(self) -> list[str]:
        self._import_modules()
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        self._import_modules()
        try:
            return self._factories[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._factories, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, **options: object) -> T:
        return self.get(name)(**options)
