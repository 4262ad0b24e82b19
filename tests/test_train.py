"""The generic trainer: loss falls, EMA rule, checkpoints, exact resume after SIGKILL, DDP on gloo."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset
from tests.train_toy import loss_fn, make_problem
from tests.processes import sigkill_when

from confdiff.train import (
    CHECKPOINT_NAME,
    LOG_NAME,
    TrainConfig,
    Trainer,
    ema_decay_at,
    ema_update,
    load_checkpoint,
    load_ema_weights,
)

TESTS_DIR = Path(__file__).resolve().parent
# the subprocess scripts import the same toy problem
PROBLEM = f"import sys, torch\nsys.path.insert(0, {str(TESTS_DIR)!r})\nfrom train_toy import make_problem, loss_fn\n"


def _config(**kw) -> TrainConfig:
    base = {"lr": 1e-2, "batch_size": 8, "max_steps": 30, "ema_decay": 0.9, "log_every": 1,
            "checkpoint_every": 10, "seed": 3}
    return TrainConfig(**{**base, **kw})


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]


def test_loss_falls_and_log_and_checkpoint_are_written(tmp_path):
    model, data = make_problem()
    val = TensorDataset(*data[:8])
    trainer = Trainer(model, loss_fn, data, config=_config(max_steps=150, eval_every=50), out_dir=tmp_path,
                      val_dataset=val, eval_fn=lambda ema: {"weight_norm": float(ema[0].weight.norm())},
                      model_config={"hidden": 16}, kind="toy", progress=False)
    trainer.fit()
    losses = [r["loss"] for r in _records(tmp_path) if "loss" in r]
    assert len(losses) == 150
    assert sum(losses[-10:]) < 0.05 * sum(losses[:10])
    evals = [r for r in _records(tmp_path) if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [50, 100, 150]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] and "weight_norm" in evals[-1]

    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt["step"] == 150 and ckpt["kind"] == "toy" and ckpt["model_config"] == {"hidden": 16}
    assert ckpt["train_config"]["max_steps"] == 150
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    fresh, _ = make_problem()
    load_ema_weights(fresh, ckpt)
    for a, b in zip(fresh.parameters(), trainer.ema.parameters()):
        torch.testing.assert_close(a, b)


def test_ema_update_rule():
    ema, model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.clone() for p in ema.parameters()]
    ema_update(ema, model, 0.75)
    for e, b, p in zip(ema.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.75 * b + 0.25 * p)
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 90) == pytest.approx(91 / 100)
    assert ema_decay_at(0.999, 10**6) == 0.999


def test_existing_checkpoint_needs_resume_and_matching_config(tmp_path):
    model, data = make_problem()
    Trainer(model, loss_fn, data, config=_config(max_steps=3), out_dir=tmp_path,
            model_config={}, kind="toy", progress=False).fit()
    with pytest.raises(FileExistsError):
        Trainer(model, loss_fn, data, config=_config(), out_dir=tmp_path, model_config={}, kind="toy")
    with pytest.raises(ValueError, match="kind"):
        Trainer(model, loss_fn, data, config=_config(), out_dir=tmp_path, model_config={}, kind="other", resume=True)
    with pytest.raises(ValueError, match="data order"):
        Trainer(model, loss_fn, data, config=_config(seed=4), out_dir=tmp_path, model_config={}, kind="toy",
                resume=True)


def test_learning_rate_warms_up_then_decays_by_a_cosine_from_lr_decay_start(tmp_path):
    model, data = make_problem()
    config = _config(max_steps=30, warmup_steps=5, lr_decay_start=10, lr_final_ratio=0.1)
    trainer = Trainer(model, loss_fn, data, config=config, out_dir=tmp_path, model_config={}, kind="toy",
                      progress=False)
    trainer.fit()
    lrs = [r["lr"] for r in _records(tmp_path) if "loss" in r]
    assert lrs[0] == pytest.approx(1e-2 / 5) and lrs[4] == pytest.approx(1e-2) and lrs[9] == pytest.approx(1e-2)
    assert lrs[20] == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 10 / 20))))
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] > 1e-3
    with pytest.raises(ValueError, match="lr_decay_start"):
        TrainConfig(max_steps=10, lr_decay_start=10)


@pytest.mark.parametrize("kwargs, match", [({"lr": 0}, "lr"), ({"ema_decay": 1.0}, "ema_decay"),
                                           ({"amp": "fp8"}, "amp"), ({"batch_size": 0}, "batch_size")])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_pyg_batches(tmp_path):
    from torch_geometric.data import Batch, Data

    graphs = [Data(x=torch.randn(n, 3), y=torch.randn(1)) for n in (3, 4, 5, 6) * 3]

    def graph_loss(model, batch, generator):
        pooled = torch.zeros(batch.num_graphs, 1).index_add_(0, batch.batch, model(batch.x))
        return (pooled.squeeze(-1) - batch.y) ** 2

    trainer = Trainer(torch.nn.Linear(3, 1), graph_loss, graphs, collate_fn=Batch.from_data_list,
                      config=_config(max_steps=0, epochs=2, batch_size=5), out_dir=tmp_path,
                      model_config={}, kind="graph", progress=False)
    trainer.fit()
    assert trainer.step == 6 and trainer.epoch == 1  # 12 graphs, batches of 5: 3 per epoch


SCRIPT = PROBLEM + textwrap.dedent(
    """
    import sys, time
    from confdiff.train import Trainer, TrainConfig
    torch.set_num_threads(1)
    out, max_steps, resume, sleep = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4])

    def slow_loss(model, batch, generator):
        time.sleep(sleep)
        return loss_fn(model, batch, generator)

    model, data = make_problem()
    cfg = TrainConfig(lr=1e-2, batch_size=8, max_steps=max_steps, ema_decay=0.9, log_every=1,
                      checkpoint_every=3, seed=3)
    Trainer(model, slow_loss, data, config=cfg, out_dir=out, model_config={}, kind="toy", resume=resume,
            progress=False).fit()
    torch.save(model.state_dict(), out + "/final.pt")
    """
)


def _python(script: Path, *args) -> list[str]:
    return [sys.executable, str(script), *map(str, args)]


def test_sigkill_and_resume_continues_exactly(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    proc = subprocess.Popen(_python(script, killed, 100_000, 0, 0.02))
    sigkill_when(proc, lambda: (killed / LOG_NAME).exists() and any(r.get("step", 0) >= 8 for r in _records(killed)),
                 60, "the training subprocess made no progress")
    saved = load_checkpoint(killed / CHECKPOINT_NAME)["step"]
    assert saved >= 6 and saved % 3 == 0
    target = saved + 7  # 5 batches per epoch: crosses an epoch boundary, usually resumes mid-epoch

    subprocess.run(_python(script, killed, target, 1, 0), check=True)
    subprocess.run(_python(script, fresh, target, 0, 0), check=True)

    records = _records(killed)
    last_start = max(i for i, r in enumerate(records) if r.get("event") == "start")
    assert records[last_start]["step"] == saved
    assert records[last_start + 1]["step"] == saved + 1
    assert load_checkpoint(killed / CHECKPOINT_NAME)["step"] == target
    resumed, uninterrupted = torch.load(killed / "final.pt"), torch.load(fresh / "final.pt")
    for k in uninterrupted:
        torch.testing.assert_close(resumed[k], uninterrupted[k], rtol=0, atol=0)


DDP_SCRIPT = PROBLEM + textwrap.dedent(
    """
    import os, sys
    from confdiff.train import Trainer, TrainConfig
    torch.set_num_threads(1)
    out = sys.argv[1]
    model, data = make_problem()
    cfg = TrainConfig(lr=1e-2, batch_size=4, max_steps=6, log_every=2, checkpoint_every=3, seed=0)
    trainer = Trainer(model, loss_fn, data, config=cfg, out_dir=out, model_config={}, kind="toy", progress=False)
    assert trainer.world_size == 2
    trainer.fit()
    torch.save({"model": model.state_dict(), "ema": trainer.ema.state_dict()}, f"{out}/rank{os.environ['RANK']}.pt")
    """
)


def test_ddp_two_processes_on_gloo_end_identical(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(script), str(tmp_path)], check=True, env=env, timeout=120)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for part in ("model", "ema"):
        for k in r0[part]:
            torch.testing.assert_close(r0[part][k], r1[part][k], rtol=0, atol=0)
    start, _ = make_problem()
    assert not torch.allclose(r0["model"]["0.weight"], start[0].weight)  # it trained
    records = _records(tmp_path)  # only rank 0 logs: one start, one record per log step
    assert [r.get("event") for r in records].count("start") == 1
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert records[0]["world_size"] == 2 and load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 6


def test_persistent_loader_workers_train_exactly_as_the_main_process(tmp_path):
    """Worker processes live across epochs; the batches and hence the weights do not change."""
    weights = []
    for workers in (0, 2):
        model, data = make_problem()
        trainer = Trainer(model, loss_fn, data, config=_config(max_steps=40, num_workers=workers),
                          out_dir=tmp_path / str(workers), model_config={}, kind="toy", progress=False)
        trainer.fit()
        assert trainer.epoch >= 2  # several passes over the data
        weights.append([p.detach().clone() for p in trainer.model.parameters()])
    for a, b in zip(*weights):
        assert torch.equal(a, b)
