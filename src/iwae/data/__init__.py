"""Data for iwae: the paper's data sets (MNIST, Fashion-MNIST, fixed-binarized MNIST,
Omniglot) and your own arrays or images, as float32 matrices [N, D] with values in [0, 1].

    ds = load_dataset("mnist", validation="paper")   # ds.train [59600, 784], ds.valid [400, 784]
    x = binarize(ds.train[:20])                       # dynamic binarization of a batch
"""
from .dataset import LIKELIHOODS, DataError, Dataset, binarize, is_binary, remove_pixels
from .files import resolve_data_dir
from .registry import DATASETS, VALIDATIONS, DatasetInfo, describe_datasets, download_dataset, load_dataset

__all__ = ["DATASETS", "LIKELIHOODS", "VALIDATIONS", "DataError", "Dataset", "DatasetInfo", "binarize",
           "describe_datasets", "download_dataset", "is_binary", "load_dataset", "remove_pixels",
           "resolve_data_dir"]
