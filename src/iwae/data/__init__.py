"""Data for iwae: the paper's data sets (MNIST, Fashion-MNIST, fixed-binarized MNIST,
Omniglot) and your own arrays or images, as float32 matrices [N, D] with values in [0, 1].

    ds = load_dataset("mnist", validation="paper")   # ds.train [59600, 784], ds.valid [400, 784]
    x = binarize(ds.train[:20])                       # dynamic binarization of a batch
"""
from .dataset import DataError, Dataset, binarize
from .files import resolve_data_dir
from .registry import DATASETS, DatasetInfo, describe_datasets, download_dataset, load_dataset

__all__ = ["DATASETS", "DataError", "Dataset", "DatasetInfo", "binarize", "describe_datasets",
           "download_dataset", "load_dataset", "resolve_data_dir"]
