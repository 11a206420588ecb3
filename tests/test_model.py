import torch

from hpo.model import LAYER_GROUPS, LSTMClassifier


def test_layer_groups_partition_the_parameters():
    model = LSTMClassifier(100, 8, 16, num_layers=2, bidirectional=True)
    groups = model.layer_groups()
    assert tuple(groups) == LAYER_GROUPS
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert groups["embedding"][0] is model.embedding.weight
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
