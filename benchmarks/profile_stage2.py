"""Profile stage 2 of a re-ID recipe under the engine's own Trainer: wall vs CPU time, and where it goes.

    python benchmarks/profile_stage2.py [EPOCHS] [recipe overrides ...]
    python benchmarks/profile_stage2.py 3 data.device_cache=true
    OMP_NUM_THREADS=2 python benchmarks/profile_stage2.py 3        # the pre-fix thread setting

Builds ``recipes/demo/reid_synthetic.yaml`` (plus overrides) through ``ftclip.engine.prepare``, applies
the engine's CPU thread setting, then runs ``Trainer.fit`` of stage ``image`` for EPOCHS epochs with the
Trainer ``ftclip.engine.build_trainer`` makes (per-epoch atomic checkpoint, the stage history) under
cProfile, in a temporary run directory. Prints wall and main-process CPU time, the top of the
cumulative profile, and the entries for data waiting, checkpoint I/O and loader start-up.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from ftclip import engine  # noqa: E402
from ftclip.recipe import load_recipe  # noqa: E402
from ftclip.runs import RunDir  # noqa: E402

SELECTED = (r"save_checkpoint|fsync|atomic_write|_next_data|cached_batch_images|gpu_augment.py.*__call__|"
            r"dataloader.py.*__iter__|_get_iterator|build_id_text_features|log_metrics")


def main(argv: list[str]) -> int:
    epochs = int(argv[0]) if argv else 3
    overrides = argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_recipe(REPO / "recipes" / "demo" / "reid_synthetic.yaml",
                          [f"stages.image.epochs={epochs}", f"run.dir={tmp}/run"] + overrides)
        engine._quiet_lightning()
        engine.set_cpu_threads(cfg)
        module, datamodule = engine.prepare(cfg)
        run = RunDir.create(cfg)
        stage = cfg.stages.image
        print(module.set_stage("image", stage))
        datamodule.set_stage(stage.kind, stage.batch_size)
        trainer = engine.build_trainer(cfg, run, "image", stage)
        profile = cProfile.Profile()
        wall, cpu = time.perf_counter(), time.process_time()
        profile.enable()
        trainer.fit(module, datamodule=datamodule)
        profile.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"stage 2 fit: wall {wall:.2f} s, main-process CPU {cpu:.2f} s, {epochs} epochs x "
          f"{trainer.num_training_batches} batches, {torch.get_num_threads()} intra-op threads, "
          f"data.num_workers={cfg.data.num_workers}, data.device_cache={cfg.data.device_cache}, "
          f"load average {os.getloadavg()[0]:.1f}")
    stats = pstats.Stats(profile)
    stats.sort_stats("cumulative").print_stats(40)
    print("=== data waiting, checkpoint I/O, loader start-up")
    stats.print_stats(SELECTED)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
