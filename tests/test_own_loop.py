"""The divergence rules outside hpo's loop: the helpers a plain PyTorch loop needs, the runnable
example, and the Lightning callback (skipped without lightning, except under CI=true)."""

from __future__ import annotations

import math
import os
import runpy
from pathlib import Path

import pytest
import torch

from hpo.data import iter_batches
from hpo.errors import HpoError
from hpo.spec import DivergenceSpec
from hpo.training.step import group_norms, param_groups

ROOT = Path(__file__).resolve().parent.parent


def test_param_groups_by_name_and_their_gradient_norms() -> None:
    torch.manual_seed(0)
    body, head, frozen = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1), torch.nn.Linear(1, 1)
    opt = torch.optim.SGD([{"params": body.parameters(), "name": "body"}, {"params": head.parameters()},
                           {"params": frozen.parameters(), "name": "frozen"}], lr=0.1)
    groups = param_groups(opt)
    assert list(groups) == ["body", "group1", "frozen"]
    head(torch.relu(body(torch.randn(8, 3)))).sum().backward()
    norms = group_norms(groups)
    expected = [torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in m.parameters()])) for m in (body, head)]
    assert norms[:2].tolist() == pytest.approx([float(e) for e in expected])
    assert norms[2].item() == 0.0  # no gradients: a frozen group
    twice = torch.optim.SGD([{"params": body.parameters(), "name": "x"}, {"params": head.parameters(), "name": "x"}], lr=0.1)
    with pytest.raises(HpoError, match="two parameter groups are named 'x'"):
        param_groups(twice)


@pytest.mark.slow
def test_the_own_loop_example_stops_the_too_high_rate_and_shows_the_group_that_moved(
        capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:  # in this process: a second interpreter would spend seconds importing torch again
        runpy.run_path(str(ROOT / "examples" / "own_loop.py"), run_name="__main__")
    finally:
        torch.set_num_threads(threads)  # the example runs on one thread
    out = capsys.readouterr().out
    assert "sensible: stable, no verdict" in out
    assert "too high: stopped, loss jumped" in out and "epoch 3, step" in out  # the step guard, after the restart
    ratios = {}
    for line in out.split("too high:")[1].splitlines():
        if "update/weight" not in line:
            continue
        group, rest = line.split(":", 1)
        ratios[group.strip()] = float(rest.split("update/weight")[1].split()[0])
    assert ratios["head"] > 10 * ratios["embedding"]  # the head's update ratio shows which group moved


def _lightning():
    if os.environ.get("CI") == "true":  # CI installs the test extra, lightning included: it must run there
        import lightning

        return lightning
    return pytest.importorskip("lightning")


def _loaders(data):
    """(train, valid) loaders of (token ids, labels) batches of real reviews."""
    def batches(split):
        return [(b.tokens, b.labels) for b in iter_batches(split, 64, shuffle=False)]

    return (torch.utils.data.DataLoader(batches(data.train), batch_size=None),
            torch.utils.data.DataLoader(batches(data.valid), batch_size=None))


def _fit(tiny_data, optimizer: str, lr: float, jump_to: float, epochs: int):
    """A bag-of-embeddings classifier trained by Lightning with the callback, two parameter groups;
    the rate is ``lr`` in the first epoch, ``jump_to`` from the second on."""
    L = _lightning()
    from hpo.training.lightning import DivergenceCallback

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.EmbeddingBag(tiny_data.vocab_size, 16, mode="mean", padding_idx=0)
            self.head = torch.nn.Linear(16, 1)

        def forward(self, x):
            return self.head(self.embedding(x)).squeeze(-1)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.binary_cross_entropy_with_logits(self(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", torch.nn.functional.binary_cross_entropy_with_logits(self(x), y))

        def configure_optimizers(self):
            groups = [{"params": self.embedding.parameters(), "name": "embedding"},
                      {"params": self.head.parameters(), "name": "head"}]
            opt = torch.optim.Adam(groups, lr=lr) if optimizer == "adam" else torch.optim.SGD(groups, lr=lr, momentum=0.9)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 if epoch == 0 else jump_to / lr)
            return {"optimizer": opt, "lr_scheduler": sched}

    torch.manual_seed(0)
    callback = DivergenceCallback(DivergenceSpec())
    trainer = L.Trainer(max_epochs=epochs, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        accelerator="cpu")
    trainer.fit(Module(), *_loaders(tiny_data))
    return callback, trainer


def test_the_lightning_callback_judges_each_epoch_and_stops_a_nan_at_once(tiny_data) -> None:
    steady, trainer = _fit(tiny_data, "adam", lr=3e-2, jump_to=3e-2, epochs=3)
    assert steady.verdict is None and trainer.current_epoch == 3
    assert steady.monitor is not None and len(steady.monitor.val_loss) == 3  # one judgement per validated epoch
    assert steady.monitor.val_loss[-1] < 0.69  # it learns: below chance
    assert max(steady.monitor.max_grad_norm) > 0  # the groups' norms, measured before any clipping
    blown, trainer = _fit(tiny_data, "sgd", lr=0.1, jump_to=1e8, epochs=4)
    assert blown.verdict is not None and (blown.verdict.reason, blown.verdict.epoch) == ("nan", 2)
    steps = math.ceil(len(tiny_data.train) / 64)
    assert trainer.global_step < 2 * steps  # stopped inside the second epoch
    assert blown.state_dict()["monitor"]["verdict"]["reason"] == "nan"  # what a checkpoint keeps
