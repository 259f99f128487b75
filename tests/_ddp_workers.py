"""Worker functions for the multi-process DDP tests (spawned: they must be importable by name)."""

import time
from datetime import timedelta


def slow_eval_worker(rank, world, port, out_dir, config, timeout_s, eval_s):
    """One rank of a DDP run whose rank-0 evaluation takes ``eval_s`` seconds, under a process
    group timeout of ``timeout_s``: writes ``ok_<rank>`` when its fit returns."""
    import os
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch.distributed as dist
    from scoresde.training import Trainer, build_from_config, distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    try:
        def slow_evaluate(self, final=True, tb=None):
            time.sleep(eval_s)
            return {"step": self.step}

        Trainer.evaluate = slow_evaluate       # what DistributedTrainer.evaluate runs on rank 0
        model, data, loss = build_from_config(config)
        t = distributed.DistributedTrainer(model, data, loss, optim=config["optim"], train=config["train"],
                                           eval=config["eval"], sampler=config["sampler"], out_dir=out_dir,
                                           config=config, seed=config["seed"])
        t.fit()
        open(os.path.join(out_dir, f"ok_{rank}"), "w").close()
    finally:
        dist.destroy_process_group()
