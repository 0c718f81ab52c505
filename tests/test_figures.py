"""Static figures (PNG/SVG/PDF via matplotlib) from run / eval / sweep JSON, the `figures` CLI command."""
import json

import pytest

from analysis import AnalysisConfig, analyze
from analysis.cli.main import main
from analysis.figures import FORMATS, all_figures, figure_bytes, run_figures
from analysis.score.result import AnalysisResult
from analysis.testing import random_tokens, tiny_loaded

pytestmark = pytest.mark.usefixtures("one_thread")

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-"}


def _valid(data: bytes, fmt: str) -> bool:
    if fmt == "svg":
        head = data[:400].decode("utf-8", "replace")
        return "<svg" in data[:2000].decode("utf-8", "replace") and head.lstrip().startswith("<?xml")
    return data.startswith(MAGIC[fmt])


@pytest.fixture(scope="module")
def run():
    lm = tiny_loaded("llama", layers=4)
    r = analyze(lm, random_tokens(6, 32, seed=1), AnalysisConfig(estimator="knn", k=5, extra_estimators=("bucket",), both_views=True))
    r.domains = ["wiki", "wiki", "code", "code", "news", "news"]
    return AnalysisResult.from_dict(json.loads(json.dumps(r.to_dict())))    # through JSON, as the CLI reads it


EVAL = {"perplexity": 31.5, "perplexity_original": 20.25, "kl": 0.31, "top1": 0.72,
        "manifest": {"plan": {"drop_layers": [2], "drop_attn": [], "drop_mlp": []}}}
SWEEP = {"rows": [{"criterion": c, "k": k, "granularity": "layer", "perplexity": 20.0 * (1 + k * (i + 1) / 4),
                   "params_removed_fraction": 0.2 * k} for i, c in enumerate(["entrodrop", "cosine"]) for k in range(3)]}


@pytest.fixture(scope="module")
def figs(run):
    return run_figures(run)


def test_every_app_chart_kind_is_rendered(run, figs):
    for name in ("entropy_curves", "delta_h_attention", "delta_h_mlp", "delta_h_layer", "norms",
                 "estimator_comparison", "domain_heatmap", "scores_entrodrop", "scores_cosine"):
        assert name in figs, sorted(figs)
    assert any(n.startswith("agreement_") for n in figs) and "bootstrap_entrodrop" in figs
    # the entropy chart carries the three residual points and the boundary line
    ax = figs["entropy_curves"].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("resid_mid" in t for t in labels)
    if run.boundary_info.get("detected"):
        assert f"boundary = {run.boundary}" in labels
    else:                                          # no stage: said in words, nothing shaded (no "boundary = 0")
        assert not any("boundary" in t for t in labels) and any("no compression" in t.get_text() for t in ax.texts)
    assert "0-based" in ax.get_xlabel()


@pytest.mark.parametrize("fmt", FORMATS)
def test_bytes_have_valid_headers(figs, fmt):
    data = figure_bytes(figs["delta_h_layer"], fmt)
    assert len(data) > 1000 and _valid(data, fmt)


def test_cli_writes_png_svg_pdf(run, tmp_path, capsys):
    rj, ej, sj = tmp_path / "run.json", tmp_path / "eval.json", tmp_path / "sweep.json"
    run.save(rj)
    ej.write_text(json.dumps(EVAL))
    sj.write_text(json.dumps(SWEEP))
    out = tmp_path / "figs"
    assert main(["figures", "--run", str(rj), "--eval", str(ej), "--sweep", str(sj), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    names = set(summary["figures"])
    assert {"entropy_curves", "eval_perplexity", "sweep", "sweep_pareto"} <= names
    files = sorted(p for p in out.iterdir() if not p.name.startswith("."))   # not our registry and lock
    assert len(files) == summary["files"] == 3 * len(names)
    for f in files:
        data = f.read_bytes()
        assert len(data) > 500 and _valid(data, f.suffix[1:]), f.name
    # nothing the user owns is replaced without --overwrite
    (out / "eval_perplexity.png").write_bytes(b"mine")
    assert main(["figures", "--eval", str(ej), "--out", str(out), "--formats", "png"]) == 2
    assert "Entroscope did not write it" in capsys.readouterr().err
    assert (out / "eval_perplexity.png").read_bytes() == b"mine"
    assert main(["figures", "--eval", str(ej), "--out", str(out), "--formats", "png", "--overwrite", "--quiet"]) == 0
    assert _valid((out / "eval_perplexity.png").read_bytes(), "png")


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["figures", "--out", str(tmp_path / "x")]) == 2
    assert "Nothing to draw" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["figures", "--sweep", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "is not valid sweep JSON (line 1, column 2" in capsys.readouterr().err
    bad.write_text(json.dumps({"rows": []}))
    assert main(["figures", "--sweep", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "no rows" in capsys.readouterr().err
    assert main(["figures", "--sweep", str(bad), "--out", str(tmp_path / "x"), "--formats", "gif"]) == 2
    assert "Unknown figure format" in capsys.readouterr().err


def test_eval_and_sweep_only(tmp_path):
    figs = all_figures(None, EVAL, SWEEP)
    assert set(figs) == {"eval_perplexity", "sweep", "sweep_pareto"}


def test_app_figures_zip_holds_every_chart_in_each_format(run):
    import io
    import zipfile

    from app_support.exporting import figures_zip

    z = zipfile.ZipFile(io.BytesIO(figures_zip(run, SWEEP, ("png", "svg"))))
    names = z.namelist()
    assert "entropy_curves.png" in names and "entropy_curves.svg" in names and "sweep_pareto.svg" in names
    assert len(names) == 2 * len(set(n.rsplit(".", 1)[0] for n in names))
    assert z.read("entropy_curves.png").startswith(MAGIC["png"])


def test_mi_and_ground_truth_figures_when_the_run_has_them(run):
    import copy

    r = copy.copy(run)
    r.extras = {"mi": {"mi": {"layer": [0.5, 0.4, None, 0.7]}, "matrix": [[1.0, 0.5], [0.5, 1.0]]},
                "ground_truth": {"layer": {"ppl": [30.0, 21.0, 22.0, 40.0], "base_ppl": 20.0}}}
    figs = run_figures(r)
    assert {"mi_per_block_layer", "mi_matrix", "ground_truth_layer"} <= set(figs)
    heights = [p.get_height() for p in figs["ground_truth_layer"].axes[0].patches]
    assert heights == pytest.approx([10.0, 1.0, 2.0, 20.0])


def test_entropy_figure_shades_a_stage_only_when_one_is_detected_and_names_the_sinks_view(run, figs):
    from analysis.figures import entropy_curves

    ax = figs["entropy_curves"].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "sinks excluded" in ax.get_title()
    r = AnalysisResult.from_dict(run.to_dict())
    r.boundary, r.boundary_info = 0, {"boundary": 0, "detected": False}
    ax0 = entropy_curves(r).axes[0]
    labels = [t.get_text() for t in ax0.get_legend().get_texts()]
    assert not any("stage" in t or "boundary" in t for t in labels)
    assert any("no compression stage" in t.get_text() for t in ax0.texts)
    assert "sinks kept" in entropy_curves(r, view="keep").axes[0].get_title()


def test_sink_views_and_massive_activation_figures(figs):
    ax = figs["sink_views_knn"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["sinks excluded", "sinks kept (reference)"]
    assert "r(Δlog norm ratio, ΔH)" in figs["massive_activations"].axes[0].get_title()


def test_delta_h_legend_sits_outside_the_plot_and_protected_blocks_are_a_strip(run):
    """The ΔH legend never covers the bars or the cosine line; protected blocks are marked on the block axis,
    not as points that read like entropy values."""
    from matplotlib.collections import PathCollection

    from analysis.figures import delta_h_bars, entropy_curves

    fig = delta_h_bars(run, "layer")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    assert fig.legends and not fig.axes[0].get_legend()
    legend_box = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:                                               # the bars' axes and the cosine twin
        assert not legend_box.overlaps(ax.get_window_extent(renderer))
    if not run.protected:
        run.protected = [0]
    ax = entropy_curves(run).axes[0]
    assert not any(isinstance(c, PathCollection) for c in ax.collections)     # no scatter markers
    strips = [p for p in ax.patches if (p.get_label() or "").startswith("protected block")]
    assert strips and all(p.get_height() < 0.05 for p in strips)          # axes fraction: a thin strip
