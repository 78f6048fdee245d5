"""Every number reslab quotes from the paper, in one place (the project's PAPER.md is the source).

    uv run python -c "from reslab.experiments import paper; print(paper.TABLE6)"

These are the paper's figures, printed beside ours in reports; they are never written into a
results column.
"""

from __future__ import annotations

# Table 6: CIFAR-10 test error (%) of the ResNets (option A shortcuts); ResNet-110 is the best of
# 5 runs (mean 6.61 +- 0.16).
TABLE6 = {
    "resnet20": 8.75,
    "resnet32": 7.51,
    "resnet44": 7.17,
    "resnet56": 6.97,
    "resnet110": 6.43,
    "resnet1202": 7.93,
}
TABLE6_RESNET110_MEAN_STD = (6.61, 0.16)

# Fig. 6, read off the curves: CIFAR-10 test error (%) of the plain nets.
FIG6 = {"plain20": "about 9-10", "plain56": "about 13"}

# Table 3: ImageNet ResNet-34 top-1 error (%), 10-crop, with shortcut options A, B and C.
TABLE3 = {"A": 25.03, "B": 24.52, "C": 24.19}

# Table 2: ImageNet validation top-1 error (%), 10-crop testing (ResNets with option A).
TABLE2 = {"plain18": 27.94, "plain34": 28.54, "resnet18": 27.88, "resnet34": 25.03}
# Table 3: ImageNet validation (top-1, top-5) error (%), 10-crop testing, by reslab config name
# (resnet34 is option A, resnet34b/c options B/C, resnet50 option B).
TABLE3_TOP1_TOP5 = {
    "plain34": (28.54, 10.02),
    "resnet34": (25.03, 7.76),
    "resnet34b": (24.52, 7.46),
    "resnet34c": (24.19, 7.40),
    "resnet50": (22.85, 6.71),
}

# Identity Mappings (He et al. 2016): pre-activation ResNet-1001 on CIFAR-10, batch 128.
PREACT_RESNET1001 = 4.92
