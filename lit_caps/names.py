"""Display names of datasets, models, attacks and classes as the paper writes them: the one copy
every report, figure and log line uses."""
from __future__ import annotations

#: Dataset -> the paper's name.
DATASETS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "svhn": "SVHN", "cifar10": "CIFAR-10", "mnist_c": "MNIST-C"}

#: Model registry name -> the paper's name (CapsNet All / DeepCaps-style: the CIFAR-10 variants of
#: Section 5.4, Fig. 3).
MODELS = {"capsnet": "CapsNet", "cnn_cr": "CNN+CR", "cnn_r": "CNN+R", "capsnet_all": "CapsNet All",
          "capsnet_winner": "DeepCaps-style"}

#: Attack registry name -> the paper's name (R-*: the reconstructive, defense-aware attacks of Section 4.2).
ATTACKS = {"fgsm": "FGSM", "bim": "BIM", "pgd": "PGD", "cw": "CW", "r_fgsm": "R-FGSM", "r_bim": "R-BIM",
           "r_pgd": "R-PGD", "selective_pgd": "Selective PGD", "orthogonal_pgd": "Orthogonal PGD",
           "apgd_joint": "APGD joint"}

#: Class names of the datasets whose labels are not digits (Fig. 4's axes).
CLASSES = {
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


def dataset_name(name: str) -> str:
    return DATASETS.get(name, name)


def model_name(name: str) -> str:
    return MODELS.get(name, name)


def attack_name(name: str) -> str:
    return ATTACKS.get(name, name)


def class_names(dataset: str, n: int = 10) -> tuple[str, ...]:
    """The dataset's class names, or the digits 0..n-1."""
    return CLASSES.get(dataset, tuple(str(i) for i in range(n)))
