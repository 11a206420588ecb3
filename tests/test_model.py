import pytest
import torch

from hpo.spec import LAYER_GROUPS
from hpo.training.models import LSTMClassifier, reverse_within_length, set_dropout


def test_layer_groups_partition_the_parameters():
    model = LSTMClassifier(100, 8, 16, num_layers=2, bidirectional=True)
    groups = model.param_groups()
    assert tuple(groups) == LAYER_GROUPS
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert groups["embedding"][0] is model.encoder.embedding.weight
    assert model.head.in_features == 3 * 16 * 2


def test_pooling_ignores_padding():
    torch.manual_seed(0)
    model = LSTMClassifier(50, 8, 12).eval()
    review = torch.tensor([[5, 7, 9, 11]])
    alone = model(review, torch.tensor([4]))
    padded = torch.tensor([[5, 7, 9, 11, 0, 0, 0], [3, 4, 5, 6, 7, 8, 9]])
    in_batch = model(padded, torch.tensor([4, 7]))
    assert torch.allclose(alone, in_batch[:1], atol=1e-6)
    # without the mask the padded positions would change the max/mean pooling
    assert not torch.allclose(model(torch.tensor([[5, 7, 9, 11, 0, 0, 0]]), torch.tensor([7])), alone, atol=1e-4)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_prediction_does_not_depend_on_the_other_reviews_in_its_batch(num_layers, bidirectional):
    torch.manual_seed(0)
    model = LSTMClassifier(50, 8, 12, num_layers=num_layers, bidirectional=bidirectional).eval()
    review = torch.tensor([[5, 7, 9, 11]])
    alone = model(review, torch.tensor([4]))
    # the same review beside a longer one: right-padded with three PAD tokens
    batch = torch.tensor([[5, 7, 9, 11, 0, 0, 0], [3, 4, 5, 6, 7, 8, 9]])
    in_batch = model(batch, torch.tensor([4, 7]))
    assert torch.allclose(alone, in_batch[:1], atol=1e-6), (alone, in_batch[:1])


def test_reverse_within_length_keeps_the_padding_in_place():
    x = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]]).unsqueeze(-1)
    out = reverse_within_length(x, torch.tensor([3, 5])).squeeze(-1)
    assert out.tolist() == [[3, 2, 1, 0, 0], [8, 7, 6, 5, 4]]
    assert torch.equal(reverse_within_length(out.unsqueeze(-1), torch.tensor([3, 5])), x)


def test_word_dropout_drops_a_word_everywhere_in_the_batch_and_only_while_training():
    torch.manual_seed(0)
    model = LSTMClassifier(1000, 8, 12, embed_dropout=0.3)
    drop = model.encoder.word_dropout
    assert set_dropout(model, 0.0) == 2 and drop.p == 0.3  # the dropout knob leaves word dropout alone
    tokens = torch.randint(1, 1000, (16, 50))
    tokens[:, 0] = tokens[0, 1]  # one word in every review, and twice in the first
    embedded = model.encoder.embedding(tokens)
    out = drop(tokens, embedded, 1000)
    zeroed = (out == 0).all(dim=-1)
    for word in tokens.unique():
        at = tokens == word
        assert zeroed[at].all() or not zeroed[at].any()  # a word is dropped wherever it occurs, or nowhere
    kept = ~zeroed
    assert torch.allclose(out[kept], embedded[kept] / 0.7)  # what is kept is scaled up
    words = tokens.unique()
    dropped = sum(bool(zeroed[tokens == w].all()) for w in words) / len(words)
    assert 0.2 < dropped < 0.4  # ~p of the batch's words (over ~550 words)
    model.eval()
    assert torch.equal(drop(tokens, embedded, 1000), embedded)
