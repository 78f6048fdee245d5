"""``reslab reproduce``: train an experiment's runs, then draw every figure and report that shows
them, and rebuild the ledger's README.

    uv run reslab reproduce fig6 --schedule 1/8 --only plain20 resnet20

Training and the ledger are :mod:`reslab.experiments.reproduce`; the figures are
:mod:`reslab.experiments.figures` (CIFAR-10) and :mod:`reslab.experiments.imagenet`.
"""

from __future__ import annotations

import shlex
from fractions import Fraction
from pathlib import Path
from typing import Any

from reslab.experiments import figures, imagenet
from reslab.experiments.report import build
from reslab.experiments.reproduce import HOME, SECTIONS, borrowed, reproduce


def reproduce_and_report(
    experiment: str, schedule: Fraction, *, argv: list[str] | None = None, **kwargs: Any
) -> tuple[list[dict[str, Any]], list[Path]]:
    """``reslab reproduce``: :func:`reproduce` (``fig7`` trains the fig6 nets), then the
    experiment's figure and report from what the ledger holds, then ``results/README.md``.
    Returns the runs' summaries and the files written."""
    trained = "fig6" if experiment == "fig7" else experiment
    summaries = reproduce(trained, schedule, argv=argv, **kwargs)
    results, data_dir = kwargs.get("results_dir", "results"), kwargs.get("data_dir")
    command = "reslab " + shlex.join(argv or ["reproduce", experiment])
    finished = [s for s in summaries if s["status"] == "finished"]
    written = []
    drawn = {"fig6": figures.fig6, "options": figures.options, "table6": figures.table6}
    drawn.update(resnet1202=figures.table6, preact=figures.table6)  # rows of Table 6
    drawn.update(fig4=imagenet.fig4, table2=imagenet.fig4, table3=imagenet.table3)
    # every figure that shows a run just finished: the command's own, those that borrow its runs
    # (Table 2 and 3 borrow Fig. 4's), and Table 6 for the runs the command borrowed
    parts = SECTIONS.get(trained, (trained,))
    borrowers = [name for (name, _), (home, _) in HOME.items() if home in parts]
    done = set()
    for part in dict.fromkeys([*parts, *borrowers, "table6"]):
        if part in drawn and drawn[part] not in done and any(_shows(part, s) for s in finished):
            done.add(drawn[part])
            written.append(drawn[part](results, schedule, command))
    if experiment == "fig7" and all(s["status"] == "finished" for s in summaries):
        written.append(figures.fig7(results, schedule, data_dir, command=command))
    build(results)
    return summaries, [*written, Path(results) / "README.md"]


def _shows(figure: str, summary: dict[str, Any]) -> bool:
    """Whether the figure of experiment ``figure`` shows the run of ``summary``: its own, or one
    it borrows from Table 6."""
    experiment = summary["name"].split("/")[0]
    return experiment == figure or (experiment, summary["model"]) in borrowed(figure).values()
