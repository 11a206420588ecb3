"""Language-model pretraining of the encoder, stored once per configuration, and fine-tuning from it."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
from pathlib import Path

import pytest
import torch

from hpo.data import load_dataset
from hpo.training.models import build_model
from hpo.training.pretrain import LanguageModel, ensure_encoder, lm_streams, perplexity, pretrain
from hpo.storage.artifacts.stores import FolderStore
from hpo.training.config import TrainConfig
from hpo.training.loop import first_epochs, train
from hpo.training.step import make_optimizer

TINY_LM = ["pretrain.epochs=2", "pretrain.max_tokens=60000", "pretrain.bptt=30", "pretrain.batch_size=16",
           "pretrain.lr=0.01", "pretrain.precision=fp32",
           "model.embedding_dim=24", "model.hidden_size=24", "model.num_layers=2"]


def test_pretraining_lowers_held_out_perplexity(small_spec) -> None:
    torch.set_num_threads(1)
    spec = small_spec(*TINY_LM)
    data = load_dataset(spec.data)
    train_stream, held = lm_streams(spec, data)
    assert len(held) > 1000 and train_stream.numel() == 60000
    torch.manual_seed(0)
    untrained = perplexity(LanguageModel(len(data.vocab), 24, 24, 2, 0.0), held, spec, "fp32", torch.device("cpu"))
    encoder = pretrain(spec, data)
    assert len(encoder.perplexities) == 2
    assert encoder.perplexities[-1] < encoder.perplexities[0] < untrained
    assert encoder.perplexities[-1] < 0.25 * untrained  # far from guessing among ~3,500 words


def test_held_out_reviews_are_whole_and_never_trained_on(small_spec) -> None:
    spec = small_spec(*TINY_LM, "pretrain.max_tokens=0")
    data = load_dataset(spec.data)
    train_stream, held = lm_streams(spec, data)
    # every review is followed by one end marker (PAD), in exactly one of the two streams
    assert int((train_stream == 0).sum()) + int((held == 0).sum()) == len(data.train)
    assert train_stream.numel() + held.numel() == int(data.train.lengths.sum()) + len(data.train)


def _ensure(spec, folder: str, url: str, barrier, results) -> None:
    barrier.wait(timeout=120)
    lines: list[str] = []
    encoder = ensure_encoder(spec, FolderStore(folder), url, log=lines.append)
    results.put((encoder.key, float(encoder.state["embedding.weight"].sum()), any("stored encoder" in l for l in lines)))


def assert_two_workers_pretrain_once(spec, artifacts: Path, url: str) -> None:
    """Two processes call ensure_encoder on ``url`` at the same moment: one trains, the other loads the same weights."""
    load_dataset(spec.data)  # the data cache exists before the race
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_ensure, args=(spec, str(artifacts), url, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    got = [results.get(timeout=5) for _ in procs]
    assert len({key for key, _, _ in got}) == 1 and len({s for _, s, _ in got}) == 1  # the same weights
    assert sorted(trained for _, _, trained in got) == [False, True]  # one trained it, the other loaded it
    assert len(list(artifacts.glob("encoder-*.pt"))) == 1


@pytest.mark.e2e
def test_two_workers_started_together_pretrain_once_and_share_it(small_spec, tmp_path) -> None:
    # ensure_encoder pretrains on the whole training split (a 30k-word softmax): the race needs
    # only a short stream and a small held-out part, not the few million tokens' worth of work
    spec = small_spec(*TINY_LM, "pretrain.epochs=1", "pretrain.max_tokens=12000", "pretrain.valid_fraction=0.005")
    assert_two_workers_pretrain_once(spec, tmp_path / "artifacts", f"sqlite:///{tmp_path / 'hpo.db'}")


def test_a_fine_tuned_classifier_starts_from_the_language_model_s_weights(small_spec) -> None:
    spec = small_spec(*TINY_LM, "pretrain.epochs=1")
    data = load_dataset(spec.data)
    encoder = pretrain(spec, data)
    tuned = build_model(spec, data.vocab_size, 0.1, encoder)
    scratch = build_model(spec, data.vocab_size, 0.1)
    for name, value in tuned.encoder.state_dict().items():
        assert torch.equal(value, encoder.state[name]), name
        assert not torch.equal(value, scratch.encoder.state_dict()[name]), name
    # a different pretraining setting is a different encoder
    other = dataclasses.replace(spec, pretrain=dataclasses.replace(spec.pretrain, lr=1e-3))
    from hpo.training.pretrain import encoder_key
    assert encoder_key(other, data) != encoder.key


def _per_layer_model(vocab: int) -> torch.nn.Module:
    from hpo.training.models import LSTMClassifier

    torch.manual_seed(0)
    return LSTMClassifier(vocab, 8, 8, num_layers=2, group_per_layer=True)


def test_each_group_s_rate_reaches_exactly_its_parameters() -> None:
    model = _per_layer_model(50)
    lrs = {"embedding": 1e-4, "encoder1": 1e-3, "encoder2": 3e-3, "head": 1e-2}
    cfg = TrainConfig(lrs=lrs, clip_norm=0, cycle_len=1, max_epochs=1, optimizer="sgd")
    optimizer = make_optimizer(model, cfg)
    groups = model.param_groups()
    assert [g["name"] for g in optimizer.param_groups] == list(lrs) == list(groups)
    for g in optimizer.param_groups:
        assert g["lr"] == lrs[g["name"]]
        assert {id(p) for p in g["params"]} == {id(p) for p in groups[g["name"]]}
    # one plain SGD step (momentum starts empty): every parameter moves by exactly -rate * gradient
    for g in optimizer.param_groups:
        g["momentum"] = 0.0
    before = {id(p): p.detach().clone() for p in model.parameters()}
    tokens = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 0]])
    loss = model(tokens, torch.tensor([4, 3])).pow(2).sum()
    loss.backward()
    optimizer.step()
    for g in optimizer.param_groups:
        for p in g["params"]:
            assert torch.allclose(p.detach(), before[id(p)] - lrs[g["name"]] * p.grad, atol=1e-7)


def test_gradual_unfreezing_freezes_what_it_says(small_spec) -> None:
    assert first_epochs(["embedding", "encoder1", "encoder2", "head"], 1) == {
        "embedding": 4, "encoder1": 3, "encoder2": 2, "head": 1}
    assert first_epochs(["embedding", "encoder", "head"], 2) == {"embedding": 5, "encoder": 3, "head": 1}
    spec = small_spec("data.max_train=128", "data.max_valid=64")
    data = load_dataset(spec.data)
    model = _per_layer_model(data.vocab_size)
    groups = model.param_groups()
    lrs = {name: 3e-3 for name in groups}
    snapshots = [{n: [p.detach().clone() for p in ps] for n, ps in groups.items()}]

    def keep(row, verdict) -> bool:
        snapshots.append({n: [p.detach().clone() for p in ps] for n, ps in groups.items()})
        return False

    cfg = TrainConfig(lrs=lrs, clip_norm=1.0, cycle_len=4, max_epochs=4, unfreeze_every=1)
    result = train(model, data, cfg, torch.device("cpu"), on_epoch=keep)
    moved = {n: [not all(torch.equal(a, b) for a, b in zip(snapshots[e][n], snapshots[e + 1][n])) for e in range(4)]
             for n in groups}
    assert moved == {"head": [True] * 4, "encoder2": [False, True, True, True],
                     "encoder1": [False, False, True, True], "embedding": [False, False, False, True]}
    # a frozen group has no gradient, so its telemetry says 0
    first = result.history[0]
    assert first.grad_norm_mean["embedding"] == 0.0 and first.grad_norm_mean["head"] > 0
    assert math.isfinite(result.history[-1].train_loss)
