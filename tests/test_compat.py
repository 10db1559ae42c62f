"""dginstyle.compat: mmcv-lite's missing compiled ops and weights-only checkpoint loading."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from dginstyle import compat
from dginstyle.io import DataError

# --------------------------------------------------------------------------------------------
# mmcv compiled ops
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(compat.mmcv_ops_available(), reason="a real compiled mmcv._ext is installed")
def test_plain_mmseg_import_fails_without_the_stand_in():
    """The trap itself: under mmcv-lite, importing mmseg.models fails on mmcv._ext."""
    result = subprocess.run(
        [sys.executable, "-c", "import mmseg.models"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "No module named 'mmcv._ext'" in result.stderr


def test_ensure_is_idempotent_and_logs_once(caplog):
    with caplog.at_level(logging.DEBUG, logger="dginstyle.compat"):
        first = compat.ensure_mmcv_ops_importable()
        module = sys.modules["mmcv._ext"]
        second = compat.ensure_mmcv_ops_importable()
    assert first == second == (not compat.mmcv_ops_available())
    assert sys.modules["mmcv._ext"] is module
    assert sum("stand-in" in r.getMessage() for r in caplog.records) <= 1


@pytest.mark.skipif(compat.mmcv_ops_available(), reason="a real compiled mmcv._ext is installed")
def test_stand_in_ops_raise_only_when_called():
    compat.ensure_mmcv_ops_importable()
    import mmcv._ext as ext
    import mmcv.ops
    from mmcv.utils.ext_loader import check_ops_exist, load_ext

    # mmcv's loader only asserts that each op name exists.
    assert load_ext("_ext", ["nms", "roi_align_forward", "anything_at_all"]) is ext
    assert ext.nms is ext.nms
    # Introspection sees a normal module: private names are absent.
    with pytest.raises(AttributeError):
        ext.__path__  # noqa: B018
    with pytest.raises(AttributeError):
        ext._private  # noqa: B018
    # pkgutil reports no compiled ops (mmcv's check_ops_exist, mmengine's collect_env).
    assert check_ops_exist() is False

    with pytest.raises(RuntimeError, match=r"mmcv compiled op 'nms' is not available: mmcv-lite has no compiled ops; install full mmcv 2\.1\.0"):
        mmcv.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)
    with pytest.raises(RuntimeError, match="envs/segmentation.yaml"):
        ext.sigmoid_focal_loss_forward(1, 2)


def test_mmseg_entry_points_import_after_import_mmseg():
    compat.import_mmseg()
    from mmseg.apis import init_model  # noqa: F401
    from mmseg.evaluation import IoUMetric  # noqa: F401
    import mmseg.models  # noqa: F401
    from mmseg.registry import METRICS, MODELS

    assert MODELS.get("MixVisionTransformer") is not None
    assert MODELS.get("SegformerHead") is not None
    assert METRICS.get("IoUMetric") is not None


def tiny_segformer_cfg(num_classes: int = 19) -> dict:
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[0.0] * 3, std=[1.0] * 3, size=(64, 64)),
        backbone=dict(
            type="MixVisionTransformer",
            in_channels=3,
            embed_dims=8,
            num_stages=4,
            num_layers=[1, 1, 1, 1],
            num_heads=[1, 2, 4, 8],
            patch_sizes=[7, 3, 3, 3],
            sr_ratios=[8, 4, 2, 1],
            out_indices=(0, 1, 2, 3),
            mlp_ratio=2,
        ),
        decode_head=dict(
            type="SegformerHead",
            in_channels=[8, 16, 32, 64],
            in_index=[0, 1, 2, 3],
            channels=16,
            num_classes=num_classes,
            norm_cfg=dict(type="BN", requires_grad=True),
            align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        ),
    )


def build_tiny_segformer():
    compat.import_mmseg()
    from mmseg.registry import MODELS

    torch.manual_seed(0)
    return MODELS.build(tiny_segformer_cfg())


def test_segformer_builds_and_runs_on_cpu():
    model = build_tiny_segformer().eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64), mode="tensor")
    assert logits.shape == (2, 19, 16, 16)
    assert torch.isfinite(logits).all()


def test_segformer_loss_and_backward_on_cpu():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    model = build_tiny_segformer().train()
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, 64, 64)))
    sample.set_metainfo(dict(img_shape=(64, 64), pad_shape=(64, 64)))
    losses = model(torch.randn(1, 3, 64, 64), [sample], mode="loss")
    total = sum(v for k, v in losses.items() if "loss" in k)
    total.backward()
    assert torch.isfinite(total)


# --------------------------------------------------------------------------------------------
# safetensors weights
# --------------------------------------------------------------------------------------------


def test_weights_round_trip_with_metadata_and_tied_tensors(tmp_path):
    shared = torch.randn(4, 3)
    state = {"a": shared, "b": shared, "view": torch.arange(10.0)[2:5], "i": torch.tensor([1, 2], dtype=torch.int64)}
    path = tmp_path / "sub" / "model.safetensors"
    compat.save_weights(state, path, {"iteration": 40000, "config": "x.py"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]  # no temp files left
    loaded, metadata = compat.load_weights(path)
    assert loaded.keys() == state.keys()
    for key in state:
        assert torch.equal(loaded[key], state[key])
    assert metadata == {"iteration": "40000", "config": "x.py"}


def test_weights_of_a_segformer_reload_strictly(tmp_path):
    model = build_tiny_segformer()
    compat.save_weights(model.state_dict(), tmp_path / "w.safetensors")
    other = build_tiny_segformer()
    for p in other.parameters():
        nn.init.zeros_(p)
    state, _ = compat.load_weights(tmp_path / "w.safetensors")
    other.load_state_dict(state, strict=True)
    for (k, v), (_, w) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(v, w), k


def test_load_weights_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        compat.load_weights(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(DataError, match="bad.safetensors"):
        compat.load_weights(bad)
    with pytest.raises(TypeError, match="'x'"):
        compat.save_weights({"x": 3}, tmp_path / "y.safetensors")


# --------------------------------------------------------------------------------------------
# mmengine checkpoints
# --------------------------------------------------------------------------------------------


def _toy_runner(work_dir: Path, max_iters: int, **kwargs):
    from mmengine.evaluator import BaseMetric
    from mmengine.model import BaseModel
    from mmengine.registry import METRICS
    from mmengine.runner import Runner

    class ToyModel(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, x, y=None, mode="tensor"):
            out = self.linear(x).squeeze(-1)
            if mode == "loss":
                return {"loss": ((out - y) ** 2).mean()}
            return [out]

    class ToyData(torch.utils.data.Dataset):
        metainfo = dict(classes=("a", "b"), palette=[[1, 2, 3], [4, 5, 6]])

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return dict(x=torch.full((2,), float(i)), y=torch.tensor(float(i)))

    class NumpyMetric(BaseMetric):
        """Returns numpy scalars, as mmseg's IoUMetric does (they end up in the message hub)."""

        def process(self, data_batch, data_samples):
            self.results.append(1)

        def compute_metrics(self, results):
            return dict(mIoU=np.round(np.float64(0.5) * 100, 2), aAcc=np.float32(97.5))

    METRICS.register_module(name="DginstyleTestNumpyMetric", module=NumpyMetric, force=True)
    loader = dict(
        dataset=ToyData(), batch_size=2, sampler=dict(type="DefaultSampler", shuffle=True), collate_fn=dict(type="default_collate")
    )
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=loader,
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=2),
        val_dataloader={**loader, "sampler": dict(type="DefaultSampler", shuffle=False)},
        val_cfg=dict(),
        val_evaluator=dict(type="DginstyleTestNumpyMetric"),
        optim_wrapper=dict(optimizer=dict(type="AdamW", lr=1e-3)),
        param_scheduler=[dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters)],
        default_hooks=dict(
            checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False, save_best="mIoU", rule="greater"),
            logger=dict(type="LoggerHook", interval=1),
        ),
        randomness=dict(seed=0),
        experiment_name=f"toy_{work_dir.name}",
        **kwargs,
    )


@pytest.fixture(scope="module")
def mmengine_run(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("run")
    _toy_runner(work_dir, max_iters=4).train()
    return work_dir


def _allowlist_names() -> set[str]:
    names = set()
    for entry in compat.mmengine_checkpoint_safe_globals():
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f"{entry.__module__}.{entry.__qualname__}")
    return names


@pytest.fixture
def empty_torch_allowlist():
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(saved)


def test_allowlist_covers_exactly_what_mmengine_writes(mmengine_run, empty_torch_allowlist):
    ckpt = mmengine_run / "iter_4.pth"
    best = next(mmengine_run.glob("best_mIoU_iter_*.pth"))
    for path in (ckpt, best):
        needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        assert "mmengine.logging.history_buffer.HistoryBuffer" in needed
        assert needed <= _allowlist_names(), needed - _allowlist_names()
        # Without the allowlist, torch >= 2.6 refuses mmengine's own checkpoint.
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)


def test_load_trusted_checkpoint(mmengine_run, empty_torch_allowlist):
    from mmengine.logging import HistoryBuffer

    ckpt = compat.load_trusted_checkpoint(mmengine_run / "iter_4.pth", mmengine_run)
    assert ckpt["meta"]["iter"] == 4
    hub = ckpt["message_hub"]
    assert isinstance(hub["log_scalars"]["train/loss"], HistoryBuffer)
    assert hub["runtime_info"]["best_score"] == pytest.approx(50.0)
    assert "linear.weight" in ckpt["state_dict"]
    # The context manager did not leak into the process-wide allowlist.
    assert torch.serialization.get_safe_globals() == []


def test_load_trusted_checkpoint_keeps_an_earlier_process_wide_allowlist(mmengine_run, empty_torch_allowlist):
    """Training checks its resume checkpoint with load_trusted_checkpoint after allowlisting
    and then lets mmengine load it: the check must not take the allowlist away (torch's own
    `safe_globals` context would remove every type on exit)."""
    compat.allow_mmengine_checkpoint_types()
    allowed = torch.serialization.get_safe_globals()
    compat.load_trusted_checkpoint(mmengine_run / "iter_4.pth", mmengine_run)
    assert torch.serialization.get_safe_globals() == allowed
    assert torch.load(mmengine_run / "iter_4.pth", map_location="cpu", weights_only=True)["meta"]["iter"] == 4


def test_mmengine_load_checkpoint_and_resume_after_allowlisting(mmengine_run, tmp_path):
    from mmengine.runner import load_checkpoint

    compat.allow_mmengine_checkpoint_types()
    compat.allow_mmengine_checkpoint_types()  # idempotent
    runner = _toy_runner(tmp_path / "resumed", max_iters=6, resume=True, load_from=str(mmengine_run / "iter_4.pth"))
    checkpoint = load_checkpoint(runner.model, str(mmengine_run / "iter_4.pth"), map_location="cpu")
    assert checkpoint["meta"]["iter"] == 4
    runner.train()
    assert runner.iter == 6
    # Training went on from iteration 4: only iteration 6 was saved in the new run.
    assert sorted(p.name for p in (tmp_path / "resumed").glob("iter_*.pth")) == ["iter_6.pth"]
    assert runner.message_hub.get_info("best_score") == pytest.approx(50.0)


class _Evil:
    """Unpickling this runs a shell command (the side effect the tests look for)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilGetattr:
    """Tries to reach through the restricted `builtins.getattr` to something other than a statistic."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer

        return (getattr, (HistoryBuffer, "__init__"))


def test_malicious_checkpoints_are_refused_without_running(tmp_path):
    marker = tmp_path / "PWNED"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    raw = run_dir / "raw.pth"
    raw.write_bytes(pickle.dumps({"state_dict": _Evil(marker)}, protocol=2))
    zipped = run_dir / "zipped.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": _Evil(marker)}, zipped)
    via_getattr = run_dir / "getattr.pth"
    torch.save({"meta": _EvilGetattr()}, via_getattr)
    assert not marker.exists()  # pickling itself did not run it

    compat.allow_mmengine_checkpoint_types()
    for path in (raw, zipped, via_getattr):
        with pytest.raises(DataError, match="refused by the weights-only loader"):
            compat.load_trusted_checkpoint(path, run_dir)
        # mmengine's own loading path (after allowlisting) refuses it too.
        from mmengine.runner import CheckpointLoader

        with pytest.raises(pickle.UnpicklingError):
            CheckpointLoader.load_checkpoint(str(path), map_location="cpu")
    assert not marker.exists()

    # Sanity check of the test itself: a plain unpickle would have run the command.
    pickle.loads(raw.read_bytes())
    assert marker.exists()


def test_checkpoints_outside_the_run_folder_are_refused(mmengine_run, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "link.pth").symlink_to(mmengine_run / "iter_4.pth")
    with pytest.raises(DataError, match="outside the run folder"):
        compat.load_trusted_checkpoint(mmengine_run / "iter_4.pth", run_dir)
    with pytest.raises(DataError, match="link.pth.*outside the run folder"):
        compat.load_trusted_checkpoint(run_dir / "link.pth", run_dir)
    with pytest.raises(DataError, match="outside the run folder"):
        compat.load_trusted_checkpoint(run_dir / ".." / "run2" / "x.pth", run_dir)
    with pytest.raises(DataError, match="not found"):
        compat.load_trusted_checkpoint(run_dir / "absent.pth", run_dir)
    # A symlink that stays inside the run folder is fine.
    (mmengine_run / "latest.pth").symlink_to(mmengine_run / "iter_4.pth")
    assert compat.load_trusted_checkpoint(mmengine_run / "latest.pth", mmengine_run)["meta"]["iter"] == 4


def test_refuses_when_torch_is_forced_to_unpickle_everything(monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(RuntimeError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        compat.allow_mmengine_checkpoint_types()


def test_no_unsafe_torch_load_in_the_package():
    package = Path(compat.__file__).parent
    for source in package.rglob("*.py"):
        for lineno, line in enumerate(source.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                pytest.fail(f"{source}:{lineno}: torch.load without weights_only=True: {line.strip()}")
