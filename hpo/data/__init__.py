"""Data: where the reviews come from, how they become token ids, the on-disk cache, and batches.

* :mod:`hpo.data.sources`: the packaged IMDB reviews, Stanford's aclImdb folder or tarball;
* :mod:`hpo.data.files`: your labelled texts in a CSV, TSV, JSON Lines or Parquet file, streamed;
* :mod:`hpo.data.splits`: seeded, stratified splits;
* :mod:`hpo.data.text`: the tokenizer, the vocabulary, numericalizing;
* :mod:`hpo.data.tensors`: a split as one flat token tensor plus offsets; a dataset of three;
* :mod:`hpo.data.cache`: the dataset a spec describes, built once and cached on disk;
* :mod:`hpo.data.batches`: length-bucketed batches.

Example::

    ds = load_dataset(DataSpec(max_train=400, max_valid=200))
    for batch in iter_batches(ds.train, batch_size=64, shuffle=True, seed=0):
        batch.tokens.shape   # (64, longest review in the batch)
"""

from hpo.data.batches import Batch, iter_batches, pad_batch, padding_fraction
from hpo.data.cache import cache_dir, load_dataset, split_reviews
from hpo.data.files import FilePlan, plan_file
from hpo.data.sources import Review, lm_extra_reviews, read_aclimdb, read_packaged
from hpo.data.splits import drop_duplicates, stratified_split
from hpo.data.tensors import Dataset, Split, stratified_subset
from hpo.data.text import PAD, UNK, build_vocab, numericalize, tokenize

__all__ = [
    "PAD", "UNK", "Batch", "FilePlan", "Review", "Dataset", "Split", "build_vocab", "cache_dir", "drop_duplicates", "iter_batches",
    "lm_extra_reviews", "load_dataset", "numericalize", "pad_batch", "padding_fraction", "plan_file", "read_aclimdb", "read_packaged",
    "split_reviews", "stratified_split", "stratified_subset", "tokenize",
]
