"""The device follows the machine: ``device="auto"`` everywhere, resolved once, never saved.

No tensor is moved to a GPU here: where CUDA is simulated (``torch.cuda.is_available``
patched), only the resolution of a spec is checked. Tests that say "on this machine" patch it
the other way, so they hold on a GPU machine too.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from refground.data.synth import generate_synthref, synthref_dataset
from refground.devices import device_spec, resolve_device, same_device
from refground.errors import ConfigError
from refground.methods import build_method
from refground.methods.base import METHODS
from refground.methods.proposal_scoring import ProposalScoringMethod
from refground.methods.trainable import METHOD_FILE, TrainableMethod
from refground.train.config import LoopConfig, build_config, without_device
from refground.train.trainer import Trainer, training_device
from refground.vision.proposals import proposer_takes_device
from tests.tiny_trainable import register

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
VALID_FORMS = "'auto', 'cpu', 'cuda', 'cuda:N'"


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as the tests describe it: no CUDA (true here; forced on a GPU machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with one GPU, for resolving specs only: nothing may touch the device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synthref(root, seed=3, num_images=16, workers=1)
    return root


# --- resolving a spec -------------------------------------------------------------------------


@pytest.mark.usefixtures("no_cuda")
def test_auto_is_the_cpu_without_cuda() -> None:
    assert resolve_device() == resolve_device("auto") == resolve_device(None) == CPU
    assert resolve_device(" AUTO ") == CPU


@pytest.mark.usefixtures("fake_cuda")
def test_auto_is_cuda_when_cuda_is_available() -> None:
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cpu") == CPU  # asking for the CPU still gets it
    with pytest.raises(ConfigError, match=r"has 1 CUDA device\(s\) \(cuda:0 to cuda:0\)"):
        resolve_device("cuda:3")


@pytest.mark.usefixtures("no_cuda")
def test_explicit_cpu_forms() -> None:
    for spec in ("cpu", " CPU ", "cpu:0", torch.device("cpu")):
        assert resolve_device(spec).type == "cpu"


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1", torch.device("cuda")])
def test_cuda_without_cuda_says_so_and_what_to_use(spec: str | torch.device) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_device(spec)
    message = str(info.value)
    assert "no CUDA device is available" in message
    assert "device='auto'" in message and "device='cpu'" in message


def test_mps_only_when_the_machine_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"MPS is not available.*device='auto'"):
        resolve_device("mps")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "", "meta", "xla", 0, 1.5, ["cpu"]])
def test_invalid_specs_name_the_valid_forms(spec: Any) -> None:
    with pytest.raises(ConfigError, match=VALID_FORMS):
        resolve_device(spec)
    with pytest.raises(ConfigError, match=VALID_FORMS):
        device_spec(spec)


def test_device_spec_checks_the_form_not_the_machine() -> None:
    assert device_spec(None) == device_spec(" Auto") == "auto"
    assert device_spec("CUDA:1") == "cuda:1"  # stored as written, whatever this machine has
    assert same_device(torch.device("cuda"), torch.device("cuda", 1))
    assert not same_device(torch.device("cuda", 0), torch.device("cuda", 1))
    assert not same_device(CPU, torch.device("cuda"))


# --- methods ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_cuda")
def test_every_registered_method_defaults_to_this_machines_device() -> None:
    """Default options (the shipped synthref-clip; default-sized trainable models): no
    ``device`` given, so ``auto``, which is the CPU here; everything the method holds is too."""
    for name in METHODS.names():
        method = build_method(name)
        assert method.device == CPU, name
        if isinstance(method, TrainableMethod):
            assert {p.device for p in method.model.parameters()} == {CPU}, name
        scorer = getattr(method, "scorer", method)  # graph-resolve's devices are its scorer's
        if isinstance(scorer, ProposalScoringMethod):
            assert [encoder.device for encoder in scorer.encoders] == [CPU] * len(
                scorer.encoders), name


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("name", ["crop-rank", "graph-resolve", "regressor", "detr", "erpa"])
def test_asking_for_cuda_without_it_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="no CUDA device is available"):
        build_method(name, device="cuda")


def test_detectors_take_a_device_and_gt_does_not() -> None:
    assert proposer_takes_device("owlvit") and proposer_takes_device("detr")
    assert not proposer_takes_device("gt")


@pytest.mark.usefixtures("no_cuda")
def test_a_detectors_own_device_option_is_kept() -> None:
    """A method passes its device to its detector unless ``proposal_options`` names one, which
    the detector then resolves (here: a GPU this machine lacks, refused before loading)."""
    with pytest.raises(ConfigError, match="no CUDA device is available"):
        build_method("crop-rank", device="cpu", proposals="owlvit",
                     proposal_options={"device": "cuda", "model": "/nonexistent/owlvit"})


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize(("saved_with", "loaded_with"), [("auto", "cpu"), ("cpu", "auto"),
                                                         ("auto", None)])
@pytest.mark.parametrize("name", ["tiny-test", "regressor"])
def test_checkpoints_do_not_keep_the_device(name: str, saved_with: str, loaded_with: str | None,
                                            synth_root: Path, tmp_path: Path) -> None:
    """method.json holds no device, so a checkpoint loads wherever the loader says."""
    register()
    torch.manual_seed(0)
    method = build_method(name, device=saved_with)
    saved = method.save_pretrained(tmp_path / name)
    spec = json.loads((saved / METHOD_FILE).read_text())
    assert "device" not in json.dumps(spec)
    options = {} if loaded_with is None else {"device": loaded_with}
    loaded = build_method(name, checkpoint=str(saved), **options)
    assert loaded.device == CPU
    samples = synthref_dataset(synth_root).split("val").samples[:2]
    assert [p.box for p in loaded.predict(samples)] == [p.box for p in method.predict(samples)]


# --- training --------------------------------------------------------------------------------


def tiny_config(root: Path, out: Path, device: Any = "auto",
                options: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"method": "tiny-test", "options": options or {},
            "data": {"root": str(root), "train_limit": 16, "val_limit": 4},
            "train": {"epochs": 1, "batch_size": 8, "num_workers": 0, "seed": 1,
                      "eval_batch_size": 4, "device": device},
            "out": str(out)}


def test_training_config_takes_auto_by_default(tmp_path: Path) -> None:
    assert LoopConfig().device == "auto"
    assert build_config(tiny_config(tmp_path, tmp_path)).train.device == "auto"
    assert build_config(tiny_config(tmp_path, tmp_path, None)).train.device == "auto"  # older
    # a GPU config parses on any machine (checked when training starts)...
    config = build_config(tiny_config(tmp_path, tmp_path, "CUDA:1", {"device": "cuda"}))
    assert config.train.device == "cuda:1"
    # ...and where a run computes is no part of which run it is
    identity = config.run_identity()
    assert "device" not in identity["train"] and "device" not in identity["options"]
    assert identity == build_config(tiny_config(tmp_path, tmp_path)).run_identity()
    with pytest.raises(ConfigError, match=f"train.device.*{VALID_FORMS}"):
        build_config(tiny_config(tmp_path, tmp_path, "gpu"))


def test_old_run_identities_with_a_device_still_match() -> None:
    old = {"method": "m", "options": {"device": "cuda"}, "train": {"device": None, "seed": 1}}
    assert without_device(old) == {"method": "m", "options": {}, "train": {"seed": 1}}
    assert old["train"] == {"device": None, "seed": 1}  # a copy, not changed in place


@pytest.mark.usefixtures("no_cuda")
def test_trainer_with_auto_builds_the_method_where_it_trains(synth_root: Path,
                                                             tmp_path: Path) -> None:
    register()
    trainer = Trainer(build_config(tiny_config(synth_root, tmp_path / "run")), progress=False,
                      log=lambda _: None)
    assert trainer.device == trainer.method.device == CPU
    assert trainer.accelerator.device == CPU
    assert {p.device for p in trainer.method.model.parameters()} == {CPU}


@pytest.mark.usefixtures("no_cuda")
def test_trainer_refuses_a_gpu_this_machine_lacks(synth_root: Path, tmp_path: Path) -> None:
    register()
    with pytest.raises(ConfigError, match=r"no CUDA device is available.*device='auto'"):
        Trainer(build_config(tiny_config(synth_root, tmp_path / "run", "cuda")),
                progress=False, log=lambda _: None)


@pytest.mark.usefixtures("no_cuda")
def test_method_device_must_agree_with_the_trainers(synth_root: Path, tmp_path: Path) -> None:
    register()
    config = tiny_config(synth_root, tmp_path / "a", "cpu", {"device": "cuda"})
    with pytest.raises(ConfigError, match=r"options.device='cuda' disagrees with train.device"):
        Trainer(build_config(config), progress=False, log=lambda _: None)
    agreeing = tiny_config(synth_root, tmp_path / "b", "auto", {"device": "cpu"})
    assert Trainer(build_config(agreeing), progress=False,
                   log=lambda _: None).method.device == CPU


@pytest.mark.usefixtures("no_cuda")
def test_a_run_resumes_under_another_device_spec(synth_root: Path, tmp_path: Path) -> None:
    """Trained with train.device=cpu, resumed with auto (as on a machine that chose the GPU)."""
    register()
    out = tmp_path / "run"
    Trainer(build_config(tiny_config(synth_root, out, "cpu")), progress=False,
            log=lambda _: None).fit()
    summary = Trainer(build_config(tiny_config(synth_root, out, "auto")), progress=False,
                      log=lambda _: None).fit(resume=True)
    assert summary.steps == 2


def test_training_device_follows_accelerate() -> None:
    """Pure logic on a stand-in accelerator: no GPU is touched."""
    def accelerator(device: str, processes: int = 1) -> SimpleNamespace:
        return SimpleNamespace(device=torch.device(device), num_processes=processes)

    assert training_device(accelerator("cpu"), CPU, "auto") == CPU
    assert training_device(accelerator("cuda:1", 2), torch.device("cuda"), "cuda") == \
        torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
        training_device(accelerator("cuda:0", 2), torch.device("cuda", 1), "cuda:1")
    with pytest.raises(ConfigError, match="asks for cuda, but Accelerate placed this process "
                                          "on cpu"):
        training_device(accelerator("cpu"), torch.device("cuda"), "cuda")
    # auto follows Accelerate, e.g. `accelerate launch --cpu` on a GPU machine
    assert training_device(accelerator("cpu"), torch.device("cuda"), "auto") == CPU
