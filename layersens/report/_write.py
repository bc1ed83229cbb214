"""Writing a report: the directory checked before any work (the check every layersens report shares, in
``layersens._atomic``), then each file through the one atomic writer."""

from __future__ import annotations

import json
from pathlib import Path

from .._atomic import check_report_dir as _check_dir
from .._atomic import write_bytes
from ._canvas import matplotlib_needed, png
from ._markdown import profile_markdown, summary_markdown
from ._sensitivity import parameters_figure, units_figure
from ._spectra import profile_figure, spectrum_figure

FILES = {
    "summary": ("report.md", "report.json", "parameters.png", "units.png", "spectrum.png", "sensitivity.npz"),
    "profile": ("report.md", "report.json", "profile.png"),
}


def check_report_dir(out_dir, kind: str, overwrite: bool = False, option: str = "--out") -> Path:
    """Before any work: matplotlib importable, and ``out_dir`` a directory (or none yet) that holds no report
    file unless ``overwrite``. ``kind``: ``"summary"`` or ``"profile"``."""
    matplotlib_needed()
    return _check_dir(out_dir, FILES[kind], overwrite, option, what=f"a {kind} report")


def _json(data: dict) -> bytes:
    return (json.dumps(data, indent=2, allow_nan=True) + "\n").encode()


def write_summary_report(summary, out_dir) -> tuple[Path, ...]:
    """Writes ``report.md``, ``report.json``, ``parameters.png``, ``units.png``, ``spectrum.png`` (when the
    summary has a spectrum) and ``sensitivity.npz`` (``layersens.results.load_sensitivity`` reads it) into
    ``out_dir``, each atomically; returns their paths."""
    out_dir = Path(out_dir)
    figures = {
        "parameters.png": "each parameter leaf's and output channel's share of ‖J‖²_F",
        "units.png": "‖∂h/∂θ‖ of each unit, averaged over the examples",
    }
    images = {
        "parameters.png": png(parameters_figure(summary.sensitivity)),
        "units.png": png(units_figure(summary.sensitivity)),
    }
    if summary.spectrum is not None:
        figures["spectrum.png"] = "top singular values per example, and where the top directions live"
        images["spectrum.png"] = png(spectrum_figure(summary))
    data = summary.to_dict()
    data["files"] = ["report.md", "report.json", *images, "sensitivity.npz"]
    written = [
        write_bytes(out_dir / "report.md", summary_markdown(data, figures).encode()),
        write_bytes(out_dir / "report.json", _json(data)),
    ]
    written += [write_bytes(out_dir / name, image) for name, image in images.items()]
    written.append(Path(summary.sensitivity.save(out_dir / "sensitivity.npz")).absolute())
    return tuple(written)


def write_profile_report(profile, out_dir) -> tuple[Path, ...]:
    """Writes ``report.md``, ``report.json`` and ``profile.png`` into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    data = profile.to_dict()
    data["files"] = list(FILES["profile"])
    figures = {"profile.png": "‖J‖_F, σ₁ and the stable rank of each layer against depth"}
    image = png(profile_figure(profile)) if profile.rows else None
    written = [
        write_bytes(out_dir / "report.md", profile_markdown(data, figures if image else {}).encode()),
        write_bytes(out_dir / "report.json", _json(data)),
    ]
    if image is not None:
        written.append(write_bytes(out_dir / "profile.png", image))
    return tuple(written)
