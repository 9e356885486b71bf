"""Readers for the built-in datasets and for a user's own class folders, one module each.

Importing this module registers the built-in datasets, in the order ``--help`` lists them.
Nothing here needs a network unless ``download=True`` is asked for. Files are read without
unpickling arbitrary objects: Fashion-MNIST and CIFAR's binary version are raw bytes; CIFAR's
python version goes through a restricted unpickler that only rebuilds numpy arrays.
"""

# The order of these imports is the order the datasets are registered in, and --help lists.
# isort: off
from selmatch.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    IDX_IMAGES,
    IDX_LABELS,
    load_fashion_mnist,
)
from selmatch.data.cifar import CIFAR_PIXELS, load_cifar10, load_cifar100
from selmatch.data.image_folder import (
    CACHE_VERSION,
    IMAGE_SUFFIXES,
    TRAIN_FEWEST,
    BadImageError,
    load_image_folder,
)
from selmatch.data.tiny_imagenet import TINY_IMAGENET_URL, load_tiny_imagenet
# isort: on

from selmatch.data._shared import COPY_AGAIN

__all__ = [
    "CACHE_VERSION",
    "CIFAR_PIXELS",
    "COPY_AGAIN",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "IDX_IMAGES",
    "IDX_LABELS",
    "IMAGE_SUFFIXES",
    "TINY_IMAGENET_URL",
    "TRAIN_FEWEST",
    "BadImageError",
    "load_cifar10",
    "load_cifar100",
    "load_fashion_mnist",
    "load_image_folder",
    "load_tiny_imagenet",
]
