"""`DurableCheckpointHook`: mmengine's CheckpointHook, with checkpoints that are complete under
their final name. Registered in mmseg's HOOKS; the training config names it.

mmengine's hook writes `iter_N.pth` in place, then the `last_checkpoint` pointer in place, and
deletes the oldest checkpoint before it saves the new one. A full disk (or a crash of the
machine) during the save leaves a truncated `iter_N.pth` that the pointer may name, and the
older checkpoint a rerun could resume from may already be gone; its error names no file. Here:

1. the checkpoint is written as `.iter_N.pth.tmp`, fsynced, renamed to `iter_N.pth` and the
   folder fsynced (dginstyle.durable); an error removes the temporary file and names
   `iter_N.pth`, so that the CLI says "<work_dir>/iter_N.pth: No space left on device";
2. only then is `last_checkpoint` replaced (durably too);
3. only then are checkpoints beyond `max_keep_ckpts` deleted.

What the checkpoint holds is unchanged (the same `last_ckpt` and `keep_ckpt_ids` runtime info
as mmengine records), so a run resumes exactly as before.
"""

from __future__ import annotations

from pathlib import Path

from dginstyle import durable
from dginstyle.compat import import_mmseg
from dginstyle.io import naming

import_mmseg(init_default_scope=False)

from mmengine.dist import is_main_process  # noqa: E402
from mmengine.hooks import CheckpointHook  # noqa: E402
from mmseg.registry import HOOKS  # noqa: E402


@HOOKS.register_module()
class DurableCheckpointHook(CheckpointHook):
    """CheckpointHook whose saves are atomic and durable, pointer and clean-up after the save."""

    def _save_checkpoint_with_step(self, runner, step, meta):
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))

        final = Path(self.out_dir) / self.filename_tmpl.format(step)
        self.last_ckpt = str(final)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        tmp = final.with_name(f".{final.name}.tmp")
        try:
            with naming(final):
                runner.save_checkpoint(
                    self.out_dir, tmp.name, self.file_client_args, save_optimizer=self.save_optimizer,
                    save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                    backend_args=self.backend_args, **self.args,
                )  # fmt: skip
                durable.fsync_file(tmp)
            durable.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

        if not is_main_process():
            return
        durable.write_bytes(Path(runner.work_dir) / "last_checkpoint", self.last_ckpt.encode())
        for old in outdated:
            (Path(self.out_dir) / self.filename_tmpl.format(old)).unlink(missing_ok=True)
        for leftover in Path(self.out_dir).glob(".*.pth.tmp"):  # of a save that was killed
            leftover.unlink(missing_ok=True)
