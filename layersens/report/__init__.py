"""Figures and reports of sensitivity summaries and profiles: Markdown, JSON and PNG, each file written through
``layersens._atomic``.

Imported only when a figure is drawn or a report written (``import layersens`` does not import it); drawing needs
matplotlib (the ``report`` extra), imported on first use, through its object API on an Agg canvas: pyplot's global
state and the user's backend are left alone. The results are read by their attributes: this package imports no
result class, so that the results can import it for their ``plot()``.
"""

from ._canvas import png, save_png
from ._sensitivity import parameters_figure, units_figure
from ._spectra import overview_figure, profile_figure, sensitivity_figure, spectrum_figure, summary_figure
from ._write import FILES, check_report_dir, write_profile_report, write_summary_report
