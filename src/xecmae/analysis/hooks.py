"""Training-run plots as hooks (:mod:`xecmae.train.hooks`): attached by the command line, so
training itself never imports the plotting layer.

- :class:`LossCurves`: ``loss_curves.png`` in the run directory after every epoch;
- :class:`EventDisplay`: ``event_display_epoch_N.png``, the first event of every prediction file
  an epoch's validation report wrote.

Both are kept with the run as MLflow artifacts (folder ``plots``).
"""

from __future__ import annotations

import logging

from xecmae.train.hooks import EpochEnd, Hook

log = logging.getLogger(__name__)

LOSS_CURVES = "loss_curves.png"


class LossCurves(Hook):
    def on_epoch_end(self, end: EpochEnd) -> None:
        from xecmae.analysis.plots import plot_loss_curves

        path = plot_loss_curves(end.history, end.run_dir / LOSS_CURVES, title=end.run_dir.name)
        end.log_artifact(path, "plots")


class EventDisplay(Hook):
    def on_epoch_end(self, end: EpochEnd) -> None:
        predictions = [p for p in end.files if p.suffix == ".root" and "_predictions_epoch_" in p.name]
        if not predictions:
            return
        from matplotlib import pyplot as plt

        from xecmae.analysis.display import prediction_event_figure

        for source in predictions:
            path = end.run_dir / f"event_display_epoch_{end.epoch}.png"
            fig = prediction_event_figure(source, entry=0)
            try:
                fig.savefig(path, dpi=90)
            finally:
                plt.close(fig)
            log.info("event display: %s", path)
            end.log_artifact(path, "plots")


def training_plots() -> list[Hook]:
    """The plots every training command attaches."""
    return [LossCurves(), EventDisplay()]
