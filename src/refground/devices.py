"""Where models run: every ``device`` option in refground goes through :func:`resolve_device`.

A device spec is one of

* ``"auto"`` (the default everywhere; ``None`` means the same): the GPU when
  ``torch.cuda.is_available()``, else the CPU. Apple's ``mps`` is used only when asked for:
  not every operation the methods use is checked on it;
* ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, or a :class:`torch.device` of those kinds.

Methods resolve their spec once, when they are built, and keep the concrete
:class:`torch.device`. What is saved (``method.json``, training configs) holds the spec as the
user wrote it or no device at all, never the resolved device, so a model trained on a GPU loads
on a machine without one.
"""

from __future__ import annotations

import torch

from refground.errors import ConfigError

AUTO = "auto"
#: The kinds of device a spec may name.
DEVICE_TYPES = ("cpu", "cuda", "mps")
VALID_FORMS = "'auto', 'cpu', 'cuda', 'cuda:N' (N = GPU index) or 'mps'"

DeviceSpec = str | torch.device | None


def auto_device() -> torch.device:
    """What ``"auto"`` means on this machine: CUDA when available, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def parse_device(spec: DeviceSpec) -> torch.device | None:
    """The device a spec names (``None`` for ``"auto"``), without asking whether this machine
    has it; a spec of no valid form raises :class:`ConfigError` naming the valid forms."""
    if spec is None:
        return None
    if isinstance(spec, torch.device):
        device = spec
    elif isinstance(spec, str):
        text = spec.strip().lower()
        if text == AUTO:
            return None
        try:
            device = torch.device(text)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"invalid device {spec!r}: use {VALID_FORMS}") from exc
    else:
        raise ConfigError(f"device must be a string ({VALID_FORMS}), got {spec!r}")
    if device.type not in DEVICE_TYPES:
        raise ConfigError(f"unsupported device {spec!r}: use {VALID_FORMS}")
    return device


def device_spec(spec: DeviceSpec) -> str:
    """A spec checked for its form (not for this machine) and written out: ``"auto"``,
    ``"cpu"``, ``"cuda:1"``... What configs store, so they load on any machine."""
    device = parse_device(spec)
    return AUTO if device is None else str(device)


def resolve_device(spec: DeviceSpec = AUTO) -> torch.device:
    """The concrete device a spec names, checked against this machine.

    Raises :class:`ConfigError` for a string that names no device (saying which forms are
    valid) and for a device this machine does not have (saying what to use instead).
    """
    device = parse_device(spec)
    if device is None:
        return auto_device()
    if device.type == "cuda":
        _check_cuda(spec, device)
    elif device.type == "mps" and not _mps_available():
        raise ConfigError(f"device {str(spec)!r} was requested but Apple's MPS is not available "
                          "on this machine; use device='auto' (the GPU when there is one, "
                          "else the CPU) or device='cpu'")
    return device


def _check_cuda(spec: DeviceSpec, device: torch.device) -> None:
    if not torch.cuda.is_available():
        built = "" if torch.version.cuda else " (this torch is a CPU-only build)"
        raise ConfigError(
            f"device {str(spec)!r} was requested but no CUDA device is available{built}; use "
            "device='auto' (the GPU when there is one, else the CPU) or device='cpu'")
    if device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ConfigError(
                f"device {str(spec)!r} was requested but this machine has {count} CUDA "
                f"device(s) (cuda:0 to cuda:{count - 1}); use device='auto' or 'cuda'")


def _mps_available() -> bool:
    return torch.backends.mps.is_available()


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same, ``cuda`` (the current GPU) matching any ``cuda:N``."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)
